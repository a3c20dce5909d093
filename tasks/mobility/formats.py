"""Readers for real human-mobility data formats, each returning one standard frame of visits, and GPS stay points.

The standard visits frame (columns ``VISIT_COLUMNS``, one row per visit):

- ``user``: str, the dataset's user id as written in the file (``"001"`` stays ``"001"``);
- ``location``: str, the dataset's place id as written in the file (a venue hash, a POI number, a grid cell);
- ``time``: ``datetime64[ns]``, tz-naive LOCAL time of the visit (the arrival);
- ``latitude`` / ``longitude``: float64 degrees, NaN when the format has no coordinates (one exception: the mie-lab
  Foursquare files, whose coordinates are rescaled to [-1, 1] and are kept as given);
- ``category``: str, the venue category name, ``""`` when unknown;
- ``city``: str, the ``city`` argument.

Rows are sorted by (user, time) (users compare as strings, equal times keep the file's order) and the index is
reset. ``frame.attrs["dropped"]`` maps a reason to the number of rows dropped for it (``{"unparsable time": 3}``,
empty when none were) and ``frame.attrs["source"]`` is the file's path as a str.

Formats (``.gz``, ``.bz2``, ``.xz`` and ``.zip`` files are read too; pandas infers the compression from the name):

- ``read_tsmc2014``: the raw Foursquare TSMC2014 release (``dataset_TSMC2014_NYC.txt`` / ``_TKY.txt``, Yang et al.,
  IEEE TSMC 2015): tab-separated, no header, 8 columns userId, venueId, venueCategoryId, venueCategory, latitude,
  longitude, timezoneOffset (minutes), utcTimestamp (``Tue Apr 03 18:00:09 +0000 2012``); latin-1 encoded.
  Local time = utcTimestamp + timezoneOffset minutes.
- ``read_getnext_csv``: the same check-ins as the GETNext-style CSV (header ``user_id, POI_id, POI_catid, POI_catname,
  latitude, longitude, timezone, UTC_time, trajectory_id, ...``), same time rule.
- ``read_stan``: STAN's (WWW 2021) NYC arrays as CSV: ``checkins`` (user_id, poi_id, time_min) and ``pois`` (poi_id,
  latitude, longitude); no categories.
- ``read_mielab_csv``: one split of the mie-lab "location-prediction" preprocessing (Foursquare:
  ``id,user_id,location_id,latitude,longitude,start_day,start_min,weekday``; GeoLife stay points:
  ``id,user_id,location_id,duration,start_day,end_day,start_min,end_min,weekday``, no coordinates).
- ``read_gps_points``: raw GPS fixes (not visits): a scikit-mobility CSV ``lat,lng,datetime,uid``, a MovingPandas
  semicolon CSV ``X;Y;fid;id;sequence;trajectory_id;tracker;t``, a GeoLife ``.plt`` file or a GeoLife folder tree
  (``Data/<user>/Trajectory/*.plt`` or ``<user>/Trajectory/*.plt``) -> a frame ``user, time, latitude, longitude``.
- ``stay_points``: GPS fixes -> visits: stay points (Li et al. 2008) whose location is a grid cell.

Bad input raises ``MoezooError`` with one line naming the file and the problem: a missing file, missing columns
(named, with the columns the file has), latitude outside [-90, 90] or longitude outside [-180, 180] or a coordinate
that is not a number (with the first bad row), more than 1% of the rows with an unparsable time (with the column and
the first bad value; up to 1% are dropped and counted in ``attrs["dropped"]``), or no rows left. Row numbers count
data rows from 1, the header line (or a PLT file's 6 header lines) not included.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from moezoo.errors import MoezooError

VISIT_COLUMNS = ("user", "location", "time", "latitude", "longitude", "category", "city")
GPS_COLUMNS = ("user", "time", "latitude", "longitude")

TSMC2014_COLUMNS = ("userId", "venueId", "venueCategoryId", "venueCategory", "latitude", "longitude",
                    "timezoneOffset", "utcTimestamp")
TSMC2014_TIME_FORMAT = "%a %b %d %H:%M:%S +0000 %Y"
GETNEXT_COLUMNS = ("user_id", "POI_id", "POI_catname", "latitude", "longitude", "timezone", "UTC_time")
STAN_CHECKIN_COLUMNS = ("user_id", "poi_id", "time_min")
STAN_POI_COLUMNS = ("poi_id", "latitude", "longitude")
MIELAB_FOURSQUARE_COLUMNS = ("user_id", "location_id", "latitude", "longitude", "start_day", "start_min")
MIELAB_GEOLIFE_COLUMNS = ("user_id", "location_id", "start_day", "start_min")
SKMOB_COLUMNS = ("lat", "lng", "datetime", "uid")
MOVINGPANDAS_COLUMNS = ("X", "Y", "tracker", "t")
PLT_HEADER_LINES = 6
PLT_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

MAX_UNPARSABLE_FRACTION = 0.01  # up to this share of rows with a bad time is dropped and counted; more is an error
EARTH_RADIUS_M = 6_371_008.8  # mean Earth radius (IUGG)
UNPARSABLE_TIME = "unparsable time"
MISSING_ID = "missing user or location id"
MISSING_COORDINATES = "missing coordinates"
OUTSIDE_STAYS = "fix not in a stay point"


# ---------------------------------------------------------------------------------------------------- file reading


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise MoezooError(f"{path}: no such file")
    if path.is_dir():
        raise MoezooError(f"{path}: is a folder, expected a file")
    return path


def _read_text_table(path: Path, *, sep: str = ",", header: int | None = 0, encoding: str = "utf-8",
                     **kwargs) -> pd.DataFrame:
    """``pd.read_csv`` with every value as a string (missing -> NaN), pandas' errors as one-line ``MoezooError``s.

    UTF-8 files that are not valid UTF-8 are read again as latin-1 (which decodes any byte). Rows with more fields
    than the header are an error (pandas would otherwise drop the surplus fields with a warning)."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", pd.errors.ParserWarning)
            try:
                frame = pd.read_csv(path, sep=sep, header=header, dtype=str, index_col=False, encoding=encoding,
                                    **kwargs)
            except UnicodeDecodeError:
                frame = pd.read_csv(path, sep=sep, header=header, dtype=str, index_col=False, encoding="latin-1",
                                    **kwargs)
    except pd.errors.EmptyDataError:
        raise MoezooError(f"{path}: the file is empty") from None
    except (pd.errors.ParserError, OSError, EOFError, ValueError, lzma.LZMAError) as error:
        raise MoezooError(f"{path}: cannot be read as a table: {' '.join(str(error).split())[:200]}") from None
    if any("does not match length of data" in str(warning.message) for warning in caught):
        raise MoezooError(f"{path}: some rows have more fields than the {frame.shape[1]} columns of the header")
    return frame


def _require_columns(frame: pd.DataFrame, path: Path, required: Sequence[str], layout: str) -> None:
    missing = [column for column in required if column not in frame.columns]
    if missing:
        has = ", ".join(map(str, frame.columns)) or "no columns"
        raise MoezooError(f"{path}: missing column(s) {', '.join(missing)} of the {layout} format; "
                          f"the file has: {has}")


def _first_line(path: Path) -> str:
    """The file's first line (decompressed by the name's suffix), without a byte-order mark or line end."""
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix.lower(), open)
    try:
        with opener(path, "rt", encoding="latin-1") as handle:
            return handle.readline().lstrip("\ufeffï»¿").strip()
    except (OSError, EOFError, lzma.LZMAError) as error:
        raise MoezooError(f"{path}: cannot be read: {' '.join(str(error).split())[:200]}") from None


# --------------------------------------------------------------------------------------------------- value parsing


def _numbers(raw: pd.Series, path: Path, column: str) -> np.ndarray:
    """A text column as float64 (missing -> NaN); a value that is not a number is an error naming its row."""
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.isnan(values) & raw.notna().to_numpy() & (raw.astype(str).str.strip() != "").to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise MoezooError(f"{path}: {column} {raw.iloc[row]!r} is not a number (row {row + 1})")
    return values


def _check_range(values: np.ndarray, path: Path, column: str, low: float, high: float) -> None:
    bad = (values < low) | (values > high)  # NaN compares False: unknown coordinates are allowed
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise MoezooError(f"{path}: {column} {float(values[row]):.10g} outside [{low:g}, {high:g}] (row {row + 1})")


def _coordinates(latitude: pd.Series, longitude: pd.Series, path: Path, names: tuple[str, str],
                 check_range: bool = True) -> tuple[np.ndarray, np.ndarray]:
    lat, lon = _numbers(latitude, path, names[0]), _numbers(longitude, path, names[1])
    if check_range:
        _check_range(lat, path, names[0], -90.0, 90.0)
        _check_range(lon, path, names[1], -180.0, 180.0)
    return lat, lon


def _unparsable_times(path: Path, checks: Sequence[tuple[str, pd.Series, np.ndarray]]) -> np.ndarray:
    """Rows whose time could not be built: ``checks`` are (column, raw text, bad mask) for each column the time
    needs. More than 1% of the rows bad is an error naming the column and the first bad value; else the mask."""
    bad = np.zeros(len(checks[0][1]), dtype=bool)
    for _, _, column_bad in checks:
        bad |= column_bad
    if bad.sum() > MAX_UNPARSABLE_FRACTION * len(bad):
        row = int(np.flatnonzero(bad)[0])
        column, raw = next((column, raw) for column, raw, column_bad in checks if column_bad[row])
        value = raw.iloc[row]
        shown = "an empty value" if pd.isna(value) else repr(value)
        raise MoezooError(f"{path}: {int(bad.sum())} of {len(bad)} rows ({bad.mean():.1%}, more than "
                          f"{MAX_UNPARSABLE_FRACTION:.0%}) have an unparsable time; first: column {column}, "
                          f"{shown} (row {row + 1})")
    return bad


def _parse_datetimes(raw: pd.Series, time_format: str) -> tuple[pd.Series, np.ndarray]:
    """Text -> (tz-naive datetimes, mask of unparsable values). Strings with a UTC offset are converted to UTC."""
    if time_format == "ISO8601":
        parsed = pd.to_datetime(raw, format="ISO8601", errors="coerce", utc=True).dt.tz_convert(None)
    else:
        parsed = pd.to_datetime(raw, format=time_format, errors="coerce")
    return parsed.astype("datetime64[ns]"), parsed.isna().to_numpy()


def _minutes(raw: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Text -> (float minutes, mask of values that are missing or not a finite number)."""
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return values, ~np.isfinite(values)


def _offset(minutes: np.ndarray) -> pd.TimedeltaIndex:
    return pd.to_timedelta(np.nan_to_num(minutes) * 60e9, unit="ns")


def _origin(origin: str) -> pd.Timestamp:
    try:
        return pd.Timestamp(origin).as_unit("ns")  # also rejects dates that nanoseconds cannot hold ('April': year 1)
    except (TypeError, ValueError, OverflowError):
        raise MoezooError(f"origin {origin!r} is not a date or time in 1678-2262 (e.g. '2012-04-03')") from None


def _text(raw: pd.Series) -> pd.Series:
    """Ids and names as str with surrounding blanks removed (missing stays missing)."""
    return raw.str.strip()


# -------------------------------------------------------------------------------------------------- frame building


def _visits(path: Path | str, *, user: pd.Series, location: pd.Series, time, latitude, longitude, category,
            city: str, drop: dict[str, np.ndarray], dropped: dict[str, int] | None = None) -> pd.DataFrame:
    """The standard visits frame from equal-length columns, without the rows of ``drop`` (reason -> mask)."""
    user, location = _text(user).reset_index(drop=True), _text(location).reset_index(drop=True)
    missing_id = (user.isna() | (user == "") | location.isna() | (location == "")).to_numpy()
    drop = {**drop, MISSING_ID: missing_id}
    keep = np.ones(len(user), dtype=bool)
    counts = dict(dropped or {})
    for reason, mask in drop.items():
        newly = mask & keep
        if newly.any():
            counts[reason] = counts.get(reason, 0) + int(newly.sum())
        keep &= ~mask
    frame = pd.DataFrame({
        "user": user.astype(str),
        "location": location.astype(str),
        "time": pd.Series(np.asarray(time, dtype="datetime64[ns]")),
        "latitude": np.asarray(latitude, dtype=np.float64),
        "longitude": np.asarray(longitude, dtype=np.float64),
        "category": pd.Series(category).reset_index(drop=True).fillna("").astype(str).str.strip(),
        "city": city,
    })[list(VISIT_COLUMNS)]
    frame = frame[keep]
    if frame.empty:
        raise MoezooError(f"{path}: no rows left (dropped: {counts or 'none, the file has no data rows'})")
    frame = frame.sort_values(["user", "time"], kind="stable", ignore_index=True)
    frame["city"] = frame["city"].astype(str)
    frame.attrs["dropped"] = counts
    frame.attrs["source"] = str(path)
    return frame


def _local_visits(table: pd.DataFrame, path: Path, city: str, columns: dict[str, str]) -> pd.DataFrame:
    """Check-ins with a UTC time text and an offset in minutes (TSMC2014 and GETNext)."""
    utc, bad_utc = _parse_datetimes(table[columns["utc"]], TSMC2014_TIME_FORMAT)
    offset, bad_offset = _minutes(table[columns["offset"]])
    latitude, longitude = _coordinates(table[columns["latitude"]], table[columns["longitude"]], path,
                                       (columns["latitude"], columns["longitude"]))
    bad_time = _unparsable_times(path, [(columns["utc"], table[columns["utc"]], bad_utc),
                                        (columns["offset"], table[columns["offset"]], bad_offset)])
    return _visits(path, user=table[columns["user"]], location=table[columns["location"]],
                   time=utc + _offset(offset), latitude=latitude, longitude=longitude,
                   category=table[columns["category"]], city=city, drop={UNPARSABLE_TIME: bad_time})


# ------------------------------------------------------------------------------------------------------- check-ins


def read_tsmc2014(path: str | Path, city: str = "NYC") -> pd.DataFrame:
    """The raw Foursquare TSMC2014 file (``dataset_TSMC2014_NYC.txt``): tab-separated, no header, latin-1, 8 columns
    userId, venueId, venueCategoryId, venueCategory, latitude, longitude, timezoneOffset (minutes), utcTimestamp.

    location = venueId, category = venueCategory, time = utcTimestamp + timezoneOffset minutes (local). A header line
    starting with ``userId`` is skipped. Quotes are not special (venue names may contain them)."""
    path = _existing_file(path)
    table = _read_text_table(path, sep="\t", header=None, encoding="latin-1", quoting=3)  # 3 = csv.QUOTE_NONE
    if table.shape[1] != len(TSMC2014_COLUMNS):
        raise MoezooError(f"{path}: the TSMC2014 format has {len(TSMC2014_COLUMNS)} tab-separated columns "
                          f"({', '.join(TSMC2014_COLUMNS)}), this file has {table.shape[1]}")
    table.columns = list(TSMC2014_COLUMNS)
    if str(table["userId"].iloc[0]).strip().lower() == "userid":
        table = table.iloc[1:].reset_index(drop=True)
    return _local_visits(table, path, city, {"user": "userId", "location": "venueId", "category": "venueCategory",
                                             "latitude": "latitude", "longitude": "longitude",
                                             "offset": "timezoneOffset", "utc": "utcTimestamp"})


def read_getnext_csv(path: str | Path, city: str = "NYC") -> pd.DataFrame:
    """A GETNext-style Foursquare CSV (``NYC_train.csv`` / ``NYC_val.csv`` / ``NYC_test.csv``, plain or gzipped):
    header ``user_id, POI_id, POI_catid, POI_catname, latitude, longitude, timezone, UTC_time, trajectory_id, ...``.

    location = POI_id, category = POI_catname, time = UTC_time + timezone minutes (local). Other columns (POI_catid,
    trajectory_id, time_period) are not kept."""
    path = _existing_file(path)
    table = _read_text_table(path)
    _require_columns(table, path, GETNEXT_COLUMNS, "GETNext CSV")
    return _local_visits(table, path, city, {"user": "user_id", "location": "POI_id", "category": "POI_catname",
                                             "latitude": "latitude", "longitude": "longitude", "offset": "timezone",
                                             "utc": "UTC_time"})


def read_stan(checkins: str | Path, pois: str | Path, city: str = "NYC", origin: str = "2012-04-03") -> pd.DataFrame:
    """STAN's preprocessed check-ins (``checkins.csv``: user_id, poi_id, time_min) with the POI coordinates
    (``pois.csv``: poi_id, latitude, longitude).

    time = ``origin`` + time_min minutes. STAN does not document the origin of time_min (nor whether it counts UTC or
    local minutes): the default, 2012-04-03, is the first day of TSMC2014 NYC, which puts the 1 ... 458,435 minute
    range inside the dataset's dates, but the calendar dates and times of day are an assumption; differences between
    times are what the data really gives. Check-ins of a POI missing from ``pois`` get NaN coordinates; category is
    ``""`` (STAN has none). ``attrs["source"]`` is the check-ins file, ``attrs["pois_source"]`` the POI file."""
    checkins, pois = _existing_file(checkins), _existing_file(pois)
    visits = _read_text_table(checkins)
    _require_columns(visits, checkins, STAN_CHECKIN_COLUMNS, "STAN check-ins")
    places = _read_text_table(pois)
    _require_columns(places, pois, STAN_POI_COLUMNS, "STAN POI")
    latitude, longitude = _coordinates(places["latitude"], places["longitude"], pois, ("latitude", "longitude"))
    place_ids = _text(places["poi_id"])
    repeated = place_ids[place_ids.duplicated()]
    if not repeated.empty:
        raise MoezooError(f"{pois}: poi_id {repeated.iloc[0]!r} appears more than once")
    row_of_place = pd.Series(np.arange(len(places)), index=place_ids.to_numpy())
    rows = row_of_place.reindex(_text(visits["poi_id"]).to_numpy()).to_numpy(dtype=np.float64, na_value=np.nan)
    known = ~np.isnan(rows)
    index = np.where(known, rows, 0).astype(np.int64)
    minutes, bad_minutes = _minutes(visits["time_min"])
    bad_time = _unparsable_times(checkins, [("time_min", visits["time_min"], bad_minutes)])
    frame = _visits(checkins, user=visits["user_id"], location=visits["poi_id"],
                    time=_origin(origin) + _offset(minutes),
                    latitude=np.where(known, latitude[index], np.nan),
                    longitude=np.where(known, longitude[index], np.nan),
                    category=pd.Series([""] * len(visits)), city=city, drop={UNPARSABLE_TIME: bad_time})
    frame.attrs["pois_source"] = str(pois)
    return frame


def read_mielab_csv(path: str | Path, city: str, origin: str = "2012-04-03") -> pd.DataFrame:
    """One split of the mie-lab "location-prediction" preprocessing (as published by LLM-Mob), either variant:

    - Foursquare: ``id,user_id,location_id,latitude,longitude,start_day,start_min,weekday``. Its latitude and
      longitude are rescaled to [-1, 1] by the preprocessing: they are NOT degrees, are kept as given and are not
      range-checked;
    - GeoLife stay points: ``id,user_id,location_id,duration,start_day,end_day,start_min,end_min,weekday``: no
      coordinates (NaN).

    time = ``origin`` + start_day days + start_min minutes. start_day counts days from each user's own first day
    (in the published files the weekday column is a constant shift of start_day per user, a different one for each
    user), so times are not aligned across users and the calendar date is not real: only a user's time differences
    and the time of day (start_min, in the preprocessing's clock) are meaningful. The splits are separate files; the
    frame holds one. category is ``""``."""
    path = _existing_file(path)
    table = _read_text_table(path)
    foursquare = "latitude" in table.columns or "longitude" in table.columns
    if foursquare:
        _require_columns(table, path, MIELAB_FOURSQUARE_COLUMNS, "mie-lab Foursquare")
        latitude, longitude = _coordinates(table["latitude"], table["longitude"], path, ("latitude", "longitude"),
                                           check_range=False)
    else:
        _require_columns(table, path, MIELAB_GEOLIFE_COLUMNS, "mie-lab GeoLife")
        latitude = longitude = np.full(len(table), np.nan)
    days, bad_days = _minutes(table["start_day"])
    minutes, bad_minutes = _minutes(table["start_min"])
    bad_time = _unparsable_times(path, [("start_day", table["start_day"], bad_days),
                                        ("start_min", table["start_min"], bad_minutes)])
    time = _origin(origin) + _offset(np.nan_to_num(days) * 1440.0 + np.nan_to_num(minutes))
    return _visits(path, user=table["user_id"], location=table["location_id"], time=time, latitude=latitude,
                   longitude=longitude, category=pd.Series([""] * len(table)), city=city,
                   drop={UNPARSABLE_TIME: bad_time})


# ------------------------------------------------------------------------------------------------------ GPS fixes


def _points(path: Path | str, user: pd.Series, time: pd.Series, latitude: np.ndarray, longitude: np.ndarray,
            drop: dict[str, np.ndarray]) -> pd.DataFrame:
    """The GPS points frame (``GPS_COLUMNS``) without the rows of ``drop``, sorted by (user, time)."""
    drop = {**drop, MISSING_COORDINATES: np.isnan(latitude) | np.isnan(longitude)}
    keep = np.ones(len(latitude), dtype=bool)
    counts: dict[str, int] = {}
    for reason, mask in drop.items():
        newly = mask & keep
        if newly.any():
            counts[reason] = int(newly.sum())
        keep &= ~mask
    frame = pd.DataFrame({"user": _text(user).reset_index(drop=True).astype(str),
                          "time": pd.Series(np.asarray(time, dtype="datetime64[ns]")),
                          "latitude": latitude, "longitude": longitude})[keep]
    if frame.empty:
        raise MoezooError(f"{path}: no GPS fixes left (dropped: {counts or 'none, the file has no data rows'})")
    frame = frame.sort_values(["user", "time"], kind="stable", ignore_index=True)
    frame.attrs["dropped"] = counts
    frame.attrs["source"] = str(path)
    return frame


def _read_plt(path: Path) -> tuple[pd.Series, np.ndarray, np.ndarray, np.ndarray] | None:
    """One GeoLife PLT file -> (time, latitude, longitude, unparsable-time mask); None when it has no fixes."""
    try:
        table = _read_text_table(path, header=None, skiprows=PLT_HEADER_LINES)
    except MoezooError as error:
        if str(error).endswith("the file is empty"):
            return None
        raise
    if table.shape[1] < 7:
        raise MoezooError(f"{path}: a GeoLife PLT row has 7 comma-separated fields (latitude, longitude, 0, altitude, "
                          f"days, date, time), this file has {table.shape[1]}")
    latitude, longitude = _coordinates(table[0], table[1], path, ("latitude", "longitude"))
    stamp = table[5].str.strip() + " " + table[6].str.strip()
    time, bad = _parse_datetimes(stamp, PLT_TIME_FORMAT)
    bad = _unparsable_times(path, [("date and time", stamp, bad)])
    return time, latitude, longitude, bad


def _plt_files(folder: Path) -> list[tuple[str, Path]]:
    """(user, file) for the PLT files of a GeoLife tree: ``Data/<user>/Trajectory``, ``<user>/Trajectory`` or a
    single ``<user>`` folder holding ``Trajectory``."""
    root = folder / "Data" if (folder / "Data").is_dir() else folder
    users = sorted(child for child in root.iterdir() if (child / "Trajectory").is_dir())
    if not users and (folder / "Trajectory").is_dir():
        users = [folder]
    return [(user.name, plt) for user in users for plt in sorted((user / "Trajectory").glob("*.plt"))]


def _read_plt_tree(files: list[tuple[str, Path]], source: Path) -> pd.DataFrame:
    users, times, latitudes, longitudes, bads = [], [], [], [], []
    for user, plt in files:
        parsed = _read_plt(plt)
        if parsed is None:
            continue
        time, latitude, longitude, bad = parsed
        users.append(pd.Series([user] * len(time), dtype=str))
        times.append(time)
        latitudes.append(latitude)
        longitudes.append(longitude)
        bads.append(bad)
    if not times:
        raise MoezooError(f"{source}: the GeoLife PLT files hold no GPS fixes")
    return _points(source, pd.concat(users, ignore_index=True), pd.concat(times, ignore_index=True),
                   np.concatenate(latitudes), np.concatenate(longitudes), {UNPARSABLE_TIME: np.concatenate(bads)})


def read_gps_points(path: str | Path, *, local_offset_min: float = 0.0) -> pd.DataFrame:
    """Raw GPS fixes -> a frame ``user`` (str), ``time`` (datetime64[ns], tz-naive), ``latitude``, ``longitude``
    (float64 degrees), sorted by (user, time), with ``attrs["dropped"]`` and ``attrs["source"]`` as for visits.

    Accepted inputs (recognised by the header line, or the ``.plt`` suffix, or a folder):

    - scikit-mobility CSV, comma-separated ``lat,lng,datetime,uid`` (any other columns ignored);
    - MovingPandas CSV, semicolon-separated ``X;Y;fid;id;sequence;trajectory_id;tracker;t``: X = longitude,
      Y = latitude, user = tracker, time = t (``2008-12-11 04:42:14+00``);
    - a GeoLife ``.plt`` file (user = the folder above ``Trajectory``, else the file's stem) or a GeoLife folder tree
      ``Data/<user>/Trajectory/*.plt`` or ``<user>/Trajectory/*.plt``: 6 header lines, then latitude, longitude, 0,
      altitude (feet), days since 1899-12-30, date (YYYY-MM-DD), time (HH:MM:SS).

    Times with a UTC offset are converted to UTC; GeoLife times (all three sources) are GMT. ``local_offset_min`` is
    added to every time to get local time (GeoLife, Beijing: 480). Fixes without coordinates are dropped and
    counted; a coordinate out of range is an error."""
    path = Path(path)
    if not path.exists():
        raise MoezooError(f"{path}: no such file or folder")
    if path.is_dir():
        files = _plt_files(path)
        if not files:
            raise MoezooError(f"{path}: no GeoLife .plt files (expected Data/<user>/Trajectory/*.plt or "
                              "<user>/Trajectory/*.plt)")
        points = _read_plt_tree(files, path)
    elif path.suffix.lower() == ".plt":
        user = path.parent.parent.name if path.parent.name.lower() == "trajectory" else path.stem
        points = _read_plt_tree([(user, path)], path)
    else:
        header = _first_line(path)
        if ";" in header:
            table = _read_text_table(path, sep=";")
            _require_columns(table, path, MOVINGPANDAS_COLUMNS, "MovingPandas CSV")
            names, user, stamp = ("Y", "X"), table["tracker"], table["t"]
        elif "," in header:
            table = _read_text_table(path)
            _require_columns(table, path, SKMOB_COLUMNS, "scikit-mobility CSV")
            names, user, stamp = ("lat", "lng"), table["uid"], table["datetime"]
        else:
            raise MoezooError(f"{path}: not a GPS file this reader knows: expected a scikit-mobility CSV header "
                              f"({','.join(SKMOB_COLUMNS)}), a MovingPandas one ({';'.join(MOVINGPANDAS_COLUMNS)}), "
                              f"a .plt file or a GeoLife folder; the first line is {header[:80]!r}")
        latitude, longitude = _coordinates(table[names[0]], table[names[1]], path, names)
        time, bad = _parse_datetimes(stamp, "ISO8601")
        bad = _unparsable_times(path, [(stamp.name, stamp, bad)])
        points = _points(path, user, time, latitude, longitude, {UNPARSABLE_TIME: bad})
    if local_offset_min:
        points["time"] = points["time"] + pd.Timedelta(minutes=local_offset_min)
    return points


# ---------------------------------------------------------------------------------------------------- stay points


def _haversine_m(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    """Great-circle distance in meters between points given in radians (arrays broadcast)."""
    half_dlat, half_dlon = (lat2 - lat1) / 2.0, (lon2 - lon1) / 2.0
    a = np.sin(half_dlat) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin(half_dlon) ** 2
    return 2.0 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.minimum(a, 1.0)))


def _first_exits(lat: np.ndarray, lon: np.ndarray, distance_m: float, window: int, chunk: int = 1 << 15
                 ) -> np.ndarray:
    """For every fix i the first j > i farther than ``distance_m`` from it, looking ``window`` fixes ahead; -1 when
    none of them is (then the search has to go on further, see ``_exit_from``)."""
    n = len(lat)
    exits = np.full(n, -1, dtype=np.int64)
    ahead = np.arange(1, window + 1)
    for start in range(0, n, chunk):
        anchors = np.arange(start, min(n, start + chunk))
        candidates = anchors[:, None] + ahead[None, :]
        inside = candidates < n
        candidates = np.minimum(candidates, n - 1)
        distance = _haversine_m(lat[anchors, None], lon[anchors, None], lat[candidates], lon[candidates])
        beyond = (distance > distance_m) & inside
        found = beyond.any(axis=1)
        exits[anchors[found]] = candidates[found, beyond[found].argmax(axis=1)]
    return exits


def _exit_from(anchor: int, start: int, lat: np.ndarray, lon: np.ndarray, distance_m: float, window: int) -> int:
    """The first fix from ``start`` on farther than ``distance_m`` from ``anchor`` (``len(lat)`` when none is),
    searched in windows that double."""
    n = len(lat)
    while start < n:
        stop = min(n, start + window)
        hits = np.flatnonzero(_haversine_m(lat[anchor], lon[anchor], lat[start:stop], lon[start:stop]) > distance_m)
        if hits.size:
            return start + int(hits[0])
        start, window = stop, window * 2
    return n


def _user_stays(lat: np.ndarray, lon: np.ndarray, time_ns: np.ndarray, distance_m: float, duration_ns: int,
                window: int = 32) -> list[tuple[int, int]]:
    """Li et al. (2008) on one user's time-ordered fixes (radians): (first, end) index ranges of the stay points.

    From an anchor fix i, j is the first later fix farther than ``distance_m`` from i; if t_j - t_i is at least the
    duration, fixes i .. j-1 are a stay point and the search goes on from j, else from i + 1. A run that lasts to the
    last fix is a stay point when t_last - t_i is at least the duration."""
    n = len(lat)
    exits = _first_exits(lat, lon, distance_m, window).tolist()
    times = time_ns.tolist()
    last_time = times[-1] if n else 0
    stays = []
    i = 0
    while i < n and last_time - times[i] >= duration_ns:
        j = exits[i]
        if j < 0:
            j = _exit_from(i, i + window + 1, lat, lon, distance_m, window)
        end_time = times[j] if j < n else last_time
        if end_time - times[i] >= duration_ns:
            stays.append((i, j))
            i = j
        else:
            i += 1
    return stays


def stay_points(points: pd.DataFrame, *, distance_m: float = 200.0, duration_min: float = 20.0,
                cell_m: float = 250.0, city: str = "GeoLife",
                grid_centre: tuple[float, float] | None = None) -> pd.DataFrame:
    """GPS fixes (``read_gps_points``' frame: user, time, latitude, longitude) -> the standard visits frame of stay
    points (Li et al., "Mining user similarity based on location history", ACM GIS 2008).

    Per user, in time order: a run of consecutive fixes that stays within ``distance_m`` (haversine) of its first
    fix until a fix at least ``duration_min`` later (the first fix outside, or the user's last fix) is one stay point
    at the mean coordinate of the run, with time = its arrival (the run's first fix, in the points' clock: pass
    ``local_offset_min`` to ``read_gps_points`` for local time). location = the grid cell of ``cell_m`` meters that
    the stay point falls in, ``"<column>:<row>"`` of an equirectangular projection centred on the fixes' mean
    latitude and longitude (cell "0:0" has the mean point at its lower-left corner), so ids are comparable only
    between stay points of the same call unless ``grid_centre`` (latitude, longitude) pins the centre; the centre
    and cell size are in ``attrs["grid"]``. category is ``""``.

    ``attrs["dropped"]``: the points' own dropped counts plus the fixes that are in no stay point (and fixes without
    a time or coordinates). No stay point at all is an error."""
    source = points.attrs.get("source", "points")
    missing = [column for column in GPS_COLUMNS if column not in points.columns]
    if missing:
        raise MoezooError(f"{source}: missing column(s) {', '.join(missing)} of the GPS points frame; the frame has: "
                          f"{', '.join(map(str, points.columns)) or 'no columns'}")
    if distance_m <= 0 or duration_min < 0 or cell_m <= 0:
        raise MoezooError(f"stay_points: distance_m ({distance_m}) and cell_m ({cell_m}) must be positive and "
                          f"duration_min ({duration_min}) not negative")
    dropped = dict(points.attrs.get("dropped", {}))
    times = pd.to_datetime(points["time"], errors="coerce")
    if getattr(times.dt, "tz", None) is not None:
        times = times.dt.tz_convert(None)
    fixes = pd.DataFrame({"user": points["user"].astype(str).to_numpy(),
                          "time": times.astype("datetime64[ns]").to_numpy(),
                          "latitude": pd.to_numeric(points["latitude"], errors="coerce").to_numpy(np.float64),
                          "longitude": pd.to_numeric(points["longitude"], errors="coerce").to_numpy(np.float64)})
    unusable = (fixes["time"].isna() | fixes["latitude"].isna() | fixes["longitude"].isna()).to_numpy()
    if unusable.any():
        dropped["fix without time or coordinates"] = dropped.get("fix without time or coordinates", 0) + int(
            unusable.sum())
        fixes = fixes[~unusable]
    if fixes.empty:
        raise MoezooError(f"{source}: no GPS fixes")
    fixes = fixes.sort_values(["user", "time"], kind="stable", ignore_index=True)
    lat, lon = np.radians(fixes["latitude"].to_numpy()), np.radians(fixes["longitude"].to_numpy())
    time_ns = fixes["time"].to_numpy().astype(np.int64)
    duration_ns = int(round(duration_min * 60e9))
    user_codes, user_names = pd.factorize(fixes["user"], sort=False)
    boundaries = np.flatnonzero(np.diff(user_codes)) + 1
    starts, ends = [], []
    for first, stop in zip(np.r_[0, boundaries], np.r_[boundaries, len(fixes)]):
        for begin, end in _user_stays(lat[first:stop], lon[first:stop], time_ns[first:stop], distance_m, duration_ns):
            starts.append(first + begin)
            ends.append(first + end)
    if not starts:
        raise MoezooError(f"{source}: no stay points ({len(fixes)} fixes; none stays within {distance_m:g} m for "
                          f"{duration_min:g} min)")
    starts, ends = np.asarray(starts), np.asarray(ends)
    sizes = ends - starts
    cumulative_lat = np.r_[0.0, np.cumsum(fixes["latitude"].to_numpy())]
    cumulative_lon = np.r_[0.0, np.cumsum(fixes["longitude"].to_numpy())]
    stay_lat = (cumulative_lat[ends] - cumulative_lat[starts]) / sizes
    stay_lon = (cumulative_lon[ends] - cumulative_lon[starts]) / sizes
    if grid_centre is None:
        centre_lat, centre_lon = float(fixes["latitude"].mean()), float(fixes["longitude"].mean())
    else:
        centre_lat, centre_lon = map(float, grid_centre)
    x = EARTH_RADIUS_M * np.cos(np.radians(centre_lat)) * np.radians(stay_lon - centre_lon)
    y = EARTH_RADIUS_M * np.radians(stay_lat - centre_lat)
    column, row = np.floor(x / cell_m).astype(np.int64), np.floor(y / cell_m).astype(np.int64)
    cells = pd.Series([f"{c}:{r}" for c, r in zip(column.tolist(), row.tolist())], dtype=str)
    dropped[OUTSIDE_STAYS] = int(len(fixes) - sizes.sum())
    frame = _visits(source, user=pd.Series(np.asarray(user_names)[user_codes[starts]], dtype=str), location=cells,
                    time=fixes["time"].to_numpy()[starts], latitude=stay_lat, longitude=stay_lon,
                    category=pd.Series([""] * len(starts)), city=city, drop={}, dropped=dropped)
    frame.attrs["grid"] = {"latitude": centre_lat, "longitude": centre_lon, "cell_m": float(cell_m)}
    return frame
