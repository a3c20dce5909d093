"""Mobility formats: exact values parsed from small files of each format, every error message, stay points on
synthetic tracks (against a plain re-implementation of Li et al. 2008), and the real shared files when present."""

import gzip
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moezoo.errors import MoezooError
from moezoo.tasks.mobility.formats import (
    EARTH_RADIUS_M,
    VISIT_COLUMNS,
    read_getnext_csv,
    read_gps_points,
    read_mielab_csv,
    read_stan,
    read_tsmc2014,
    stay_points,
)

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "mobility"
GETNEXT_HEADER = "user_id,POI_id,POI_catid,POI_catname,latitude,longitude,timezone,UTC_time,trajectory_id,time_period"


def needs_shared(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"shared data not present: {path}")
    return path


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding=encoding) as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding=encoding)
    return path


def assert_standard(frame: pd.DataFrame) -> None:
    assert tuple(frame.columns) == VISIT_COLUMNS
    assert frame["time"].dtype == np.dtype("datetime64[ns]")
    assert frame["latitude"].dtype == np.float64 and frame["longitude"].dtype == np.float64
    for column in ("user", "location", "category", "city"):
        assert pd.api.types.is_string_dtype(frame[column]) and frame[column].notna().all()
    assert list(frame.index) == list(range(len(frame)))
    keys = list(zip(frame["user"], frame["time"]))
    assert keys == sorted(keys)


# ------------------------------------------------------------------------------------------------------- check-ins

TSMC_ROWS = [  # user, venue, category id, category, latitude, longitude, offset (min), UTC time
    ("2", "v1", "c1", "Caf\xe9", "40.7", "-74.0", "-240", "Tue Apr 03 18:00:09 +0000 2012"),
    ("1", "v2", "c2", 'Bar "The Dog"', "40.8", "-73.9", "-300", "Wed Apr 04 03:30:00 +0000 2012"),
    ("1", "v3", "c3", "Ramen Restaurant", "35.6", "139.7", "540", "Tue Apr 03 16:00:00 +0000 2012"),
]


def test_tsmc2014_local_time_latin1_categories_and_order(tmp_path):
    path = tmp_path / "dataset_TSMC2014_NYC.txt"
    path.write_bytes("\r\n".join("\t".join(row) for row in TSMC_ROWS).encode("latin-1"))
    frame = read_tsmc2014(path)
    assert_standard(frame)
    # local = UTC + offset: v2 is 22:30 on Apr 3 in NYC, v3 01:00 on Apr 4 in Tokyo (its UTC time is earlier)
    assert frame["location"].tolist() == ["v2", "v3", "v1"]
    assert frame["user"].tolist() == ["1", "1", "2"]
    assert frame["time"].tolist() == [pd.Timestamp("2012-04-03 22:30:00"), pd.Timestamp("2012-04-04 01:00:00"),
                                      pd.Timestamp("2012-04-03 14:00:09")]
    assert frame["category"].tolist() == ['Bar "The Dog"', "Ramen Restaurant", "Café"]
    assert frame["latitude"].tolist() == [40.8, 35.6, 40.7] and frame["longitude"].tolist() == [-73.9, 139.7, -74.0]
    assert set(frame["city"]) == {"NYC"}
    assert frame.attrs == {"dropped": {}, "source": str(path)}
    assert set(read_tsmc2014(path, city="TKY")["city"]) == {"TKY"}


def test_tsmc2014_skips_a_header_line_and_rejects_a_wrong_column_count(tmp_path):
    header = "\t".join(("userId", "venueId", "venueCategoryId", "venueCategory", "latitude", "longitude",
                        "timezoneOffset", "utcTimestamp"))
    path = write(tmp_path / "with_header.txt", header + "\n" + "\t".join(TSMC_ROWS[0]) + "\n")
    assert read_tsmc2014(path)["location"].tolist() == ["v1"]
    seven = write(tmp_path / "seven.txt", "\t".join(TSMC_ROWS[0][:7]) + "\n")
    with pytest.raises(MoezooError, match=r"seven\.txt: the TSMC2014 format has 8 tab-separated columns .*has 7"):
        read_tsmc2014(seven)


def test_getnext_csv_gz_local_time_and_extra_columns(tmp_path):
    rows = ["7,poiB,cat2,Pizza Place,40.73,-73.99,-240,Sat Jul 07 02:12:49 +0000 2012,7_1,0.08",
            "7,poiA,cat1,Bar,40.74,-73.94,-240,Fri Jul 06 23:00:00 +0000 2012,7_1,0.9",
            "10,poiC,cat3,,40.75,-73.98,-300,Mon Dec 31 23:59:59 +0000 2012,10_1,0.5"]
    path = write(tmp_path / "NYC_test.csv.gz", GETNEXT_HEADER + "\n" + "\n".join(rows) + "\n")
    frame = read_getnext_csv(path, city="New York")
    assert_standard(frame)
    assert frame["user"].tolist() == ["10", "7", "7"]  # users sort as strings
    assert frame["location"].tolist() == ["poiC", "poiA", "poiB"]
    assert frame["time"].tolist() == [pd.Timestamp("2012-12-31 18:59:59"), pd.Timestamp("2012-07-06 19:00:00"),
                                      pd.Timestamp("2012-07-06 22:12:49")]
    assert frame["category"].tolist() == ["", "Bar", "Pizza Place"]
    assert set(frame["city"]) == {"New York"}


def test_stan_origin_minutes_unsorted_rows_and_unknown_pois(tmp_path):
    checkins = write(tmp_path / "checkins.csv", "user_id,poi_id,time_min\n1,2,1500\n1,1,60\n2,9,0\n")
    pois = write(tmp_path / "pois.csv.gz", "poi_id,latitude,longitude\n1,40.5,-74.25\n2,40.75,-73.5\n")
    frame = read_stan(checkins, pois)
    assert_standard(frame)
    assert frame["user"].tolist() == ["1", "1", "2"] and frame["location"].tolist() == ["1", "2", "9"]
    assert frame["time"].tolist() == [pd.Timestamp("2012-04-03 01:00"), pd.Timestamp("2012-04-04 01:00"),
                                      pd.Timestamp("2012-04-03 00:00")]
    assert frame["latitude"].tolist()[:2] == [40.5, 40.75] and frame["longitude"].tolist()[:2] == [-74.25, -73.5]
    assert np.isnan(frame["latitude"].iloc[2]) and np.isnan(frame["longitude"].iloc[2])
    assert frame["category"].tolist() == ["", "", ""]
    assert frame.attrs["source"] == str(checkins) and frame.attrs["pois_source"] == str(pois)
    later = read_stan(checkins, pois, city="X", origin="2013-01-01 06:00")
    assert later["time"].iloc[0] == pd.Timestamp("2013-01-01 07:00") and set(later["city"]) == {"X"}


def test_stan_rejects_a_repeated_poi(tmp_path):
    checkins = write(tmp_path / "checkins.csv", "user_id,poi_id,time_min\n1,2,1500\n")
    pois = write(tmp_path / "pois.csv", "poi_id,latitude,longitude\n2,40.5,-74.25\n2,40.75,-73.5\n")
    with pytest.raises(MoezooError, match=r"pois\.csv: poi_id '2' appears more than once"):
        read_stan(checkins, pois)


def test_mielab_foursquare_keeps_rescaled_coordinates_and_geolife_has_none(tmp_path):
    foursquare = write(tmp_path / "foursquare_test.csv", "id,user_id,location_id,latitude,longitude,start_day,"
                       "start_min,weekday\n5,3,1610,0.226,-1.0,2,1147,1\n4,3,17,0.5,0.125,0,30,6\n")
    frame = read_mielab_csv(foursquare, city="NYC")
    assert_standard(frame)
    assert frame["location"].tolist() == ["17", "1610"]
    assert frame["time"].tolist() == [pd.Timestamp("2012-04-03 00:30"), pd.Timestamp("2012-04-05 19:07")]
    assert frame["latitude"].tolist() == [0.5, 0.226] and frame["longitude"].tolist() == [0.125, -1.0]
    geolife = write(tmp_path / "geolife_test.csv.gz", "id,user_id,location_id,duration,start_day,end_day,start_min,"
                    "end_min,weekday\n241,1,17,85.0,204,204,110,195,4\n")
    stays = read_mielab_csv(geolife, "Beijing", origin="2008-01-01")
    assert_standard(stays)
    assert stays["time"].tolist() == [pd.Timestamp("2008-01-01") + pd.Timedelta(days=204, minutes=110)]
    assert stays["latitude"].isna().all() and stays["longitude"].isna().all() and stays["city"].tolist() == ["Beijing"]


# ------------------------------------------------------------------------------------------------------ GPS fixes


def test_gps_points_scikit_mobility_and_movingpandas_formats(tmp_path):
    skmob = write(tmp_path / "sample.txt.gz", "lat,lng,datetime,uid\n39.98,116.31,2008-10-23 05:53:10,001\n"
                  "39.99,116.32,2008-10-23 05:53:05,001\n40.0,116.3,2008-10-23 05:00:00,005\n")
    points = read_gps_points(skmob)
    assert list(points.columns) == ["user", "time", "latitude", "longitude"]
    assert points["time"].dtype == np.dtype("datetime64[ns]")
    assert points["user"].tolist() == ["001", "001", "005"]
    assert points["time"].tolist() == [pd.Timestamp("2008-10-23 05:53:05"), pd.Timestamp("2008-10-23 05:53:10"),
                                       pd.Timestamp("2008-10-23 05:00:00")]
    assert points["latitude"].tolist() == [39.99, 39.98, 40.0] and points["longitude"].tolist()[0] == 116.32
    beijing = read_gps_points(skmob, local_offset_min=480)
    assert beijing["time"].iloc[0] == pd.Timestamp("2008-10-23 13:53:05")
    movingpandas = write(tmp_path / "demodata_geolife.csv", "X;Y;fid;id;sequence;trajectory_id;tracker;t\n"
                         "116.391305;39.898573;1;1;1;1;19;2008-12-11 04:42:14+00\n"
                         "116.5;39.9;2;2;1;2;0;2009-06-29 09:02:25+02\n")
    points = read_gps_points(movingpandas)
    assert points["user"].tolist() == ["0", "19"]
    assert points["time"].tolist() == [pd.Timestamp("2009-06-29 07:02:25"), pd.Timestamp("2008-12-11 04:42:14")]
    assert points["latitude"].tolist() == [39.9, 39.898573] and points["longitude"].tolist() == [116.5, 116.391305]


PLT_HEADER = "Geolife trajectory\nWGS 84\nAltitude is in Feet\nReserved 3\n0,2,255,My Track,0,0,2,8421376\n0\n"


def test_gps_points_geolife_trees_and_single_plt(tmp_path):
    for user_folder in ("geolife/Data/000", "users/010"):
        (tmp_path / user_folder / "Trajectory").mkdir(parents=True)
    write(tmp_path / "geolife/Data/000/Trajectory/20081023025304.plt",
          PLT_HEADER + "39.984702,116.318417,0,492,39744.1201851852,2008-10-23,02:53:04\n"
                       "39.984683,116.31845,0,492,39744.1202546296,2008-10-23,02:53:10\n")
    write(tmp_path / "geolife/Data/000/Trajectory/20081022000000.plt",
          PLT_HEADER + "39.9,116.3,0,100,39743.0,2008-10-22,00:00:00\n")
    write(tmp_path / "users/010/Trajectory/20090101000000.plt",
          PLT_HEADER + "40.1,116.5,0,100,39814.0,2009-01-01,00:00:00\n")
    data_tree = read_gps_points(tmp_path / "geolife")  # Data/<user>/Trajectory
    assert data_tree["user"].tolist() == ["000", "000", "000"]
    assert data_tree["time"].tolist() == [pd.Timestamp("2008-10-22 00:00:00"), pd.Timestamp("2008-10-23 02:53:04"),
                                          pd.Timestamp("2008-10-23 02:53:10")]
    assert data_tree["latitude"].tolist() == [39.9, 39.984702, 39.984683]
    pd.testing.assert_frame_equal(read_gps_points(tmp_path / "geolife" / "Data"), data_tree, check_like=False)
    users_tree = read_gps_points(tmp_path / "users")  # <user>/Trajectory folders side by side
    assert users_tree["user"].tolist() == ["010"]
    single = read_gps_points(tmp_path / "users/010/Trajectory/20090101000000.plt")
    assert single["user"].tolist() == ["010"] and single["longitude"].tolist() == [116.5]
    one_user = read_gps_points(tmp_path / "geolife/Data/000")
    pd.testing.assert_frame_equal(one_user, data_tree)


# ---------------------------------------------------------------------------------------------------------- errors


def many_getnext_rows(count: int, bad_times: int) -> str:
    rows = [f"1,p{i},c,Bar,40.7,-74.0,-240,Sat Jul 07 02:{i % 60:02d}:49 +0000 2012,1_1,0.1" for i in range(count)]
    for i in range(bad_times):
        rows[10 + i] = rows[10 + i].replace("Sat Jul 07", "Caturday")
    return GETNEXT_HEADER + "\n" + "\n".join(rows) + "\n"


def test_up_to_one_percent_of_unparsable_times_are_dropped_and_counted(tmp_path):
    frame = read_getnext_csv(write(tmp_path / "ok.csv", many_getnext_rows(200, 2)))
    assert len(frame) == 198 and frame.attrs["dropped"] == {"unparsable time": 2}
    assert "p10" not in set(frame["location"]) and "p11" not in set(frame["location"])
    with pytest.raises(MoezooError, match=r"bad\.csv: 3 of 200 rows \(1\.5%, more than 1%\) have an unparsable time; "
                       r"first: column UTC_time, 'Caturday 02:10:49 \+0000 2012' \(row 11\)"):
        read_getnext_csv(write(tmp_path / "bad.csv", many_getnext_rows(200, 3)))


@pytest.mark.parametrize(("name", "text", "message"), [
    ("cols.csv", "user_id,POI_id,latitude,longitude\n1,a,40,-74\n",
     r"cols\.csv: missing column\(s\) POI_catname, timezone, UTC_time of the GETNext CSV format; "
     r"the file has: user_id, POI_id, latitude, longitude"),
    ("lat.csv", GETNEXT_HEADER + "\n1,a,c,Bar,40.7,-74,-240,Sat Jul 07 02:12:49 +0000 2012,1_1,0\n"
     "1,b,c,Bar,91.5,-74,-240,Sat Jul 07 02:12:49 +0000 2012,1_1,0\n", r"lat\.csv: latitude 91\.5 outside \[-90, 90\] "
     r"\(row 2\)"),
    ("lon.csv", GETNEXT_HEADER + "\n1,a,c,Bar,40.7,-181,-240,Sat Jul 07 02:12:49 +0000 2012,1_1,0\n",
     r"lon\.csv: longitude -181 outside \[-180, 180\] \(row 1\)"),
    ("nan.csv", GETNEXT_HEADER + "\n1,a,c,Bar,north,-74,-240,Sat Jul 07 02:12:49 +0000 2012,1_1,0\n",
     r"nan\.csv: latitude 'north' is not a number \(row 1\)"),
    ("offset.csv", GETNEXT_HEADER + "\n1,a,c,Bar,40,-74,EST,Sat Jul 07 02:12:49 +0000 2012,1_1,0\n",
     r"offset\.csv: 1 of 1 rows .* unparsable time; first: column timezone, 'EST' \(row 1\)"),
    ("header_only.csv", GETNEXT_HEADER + "\n", r"header_only\.csv: no rows left \(dropped: none, the file has no "),
    ("empty.csv", "", r"empty\.csv: the file is empty"),
    ("long.csv", "user_id,POI_id,POI_catname,latitude,longitude,timezone,UTC_time\n1,a,Bar,40,-74,0,x,extra\n",
     r"long\.csv: some rows have more fields than the 7 columns of the header"),
])
def test_getnext_errors_name_the_file_and_the_problem(tmp_path, name, text, message):
    with pytest.raises(MoezooError, match=message) as caught:
        read_getnext_csv(write(tmp_path / name, text))
    assert "\n" not in str(caught.value)


def test_errors_of_the_other_readers(tmp_path):
    with pytest.raises(MoezooError, match=r"nowhere\.txt: no such file"):
        read_tsmc2014(tmp_path / "nowhere.txt")
    with pytest.raises(MoezooError, match=r"nowhere: no such file or folder"):
        read_gps_points(tmp_path / "nowhere")
    checkins = write(tmp_path / "checkins.csv", "user_id,poi_id,minutes\n1,2,3\n")
    pois = write(tmp_path / "pois.csv", "poi_id,latitude,longitude\n2,40.5,-74.25\n")
    with pytest.raises(MoezooError, match=r"checkins\.csv: missing column\(s\) time_min .*has: user_id, poi_id, "
                       r"minutes"):
        read_stan(checkins, pois)
    with pytest.raises(MoezooError, match=r"missing\.csv: no such file"):
        read_stan(tmp_path / "missing.csv", pois)
    with pytest.raises(MoezooError, match=r"origin 'April' is not a date or time"):
        read_stan(write(tmp_path / "checkins_ok.csv", "user_id,poi_id,time_min\n1,2,3\n"), pois, origin="April")
    neither = write(tmp_path / "mielab.csv", "id,user_id,location_id,start_min\n1,1,1,5\n")
    with pytest.raises(MoezooError, match=r"mielab\.csv: missing column\(s\) start_day of the mie-lab GeoLife format"):
        read_mielab_csv(neither, "Beijing")
    half = write(tmp_path / "half.csv", "id,user_id,location_id,latitude,start_day,start_min\n1,1,1,0.5,0,5\n")
    with pytest.raises(MoezooError, match=r"half\.csv: missing column\(s\) longitude of the mie-lab Foursquare"):
        read_mielab_csv(half, "NYC")
    days = write(tmp_path / "days.csv", "id,user_id,location_id,duration,start_day,end_day,start_min,end_min,weekday\n"
                 "1,1,1,5,monday,0,5,10,1\n")
    with pytest.raises(MoezooError, match=r"days\.csv: 1 of 1 rows .* first: column start_day, 'monday' \(row 1\)"):
        read_mielab_csv(days, "Beijing")
    skmob = write(tmp_path / "gps.csv", "lat,lng,time,user\n39.9,116.3,2008-10-23 05:53:05,1\n")
    with pytest.raises(MoezooError, match=r"gps\.csv: missing column\(s\) datetime, uid of the scikit-mobility CSV"):
        read_gps_points(skmob)
    far = write(tmp_path / "far.csv", "X;Y;fid;id;sequence;trajectory_id;tracker;t\n"
                "116.3;39.9;1;1;1;1;0;2008-12-11 04:42:14+00\n116.3;-95;1;1;1;1;0;2008-12-11 04:42:15+00\n")
    with pytest.raises(MoezooError, match=r"far\.csv: Y -95 outside \[-90, 90\] \(row 2\)"):
        read_gps_points(far)
    unknown = write(tmp_path / "track.gpx", "<gpx><trk></trk></gpx>\n")
    with pytest.raises(MoezooError, match=r"track\.gpx: not a GPS file this reader knows: .*'<gpx><trk></trk></gpx>'"):
        read_gps_points(unknown)
    (tmp_path / "no_plt" / "u1").mkdir(parents=True)
    with pytest.raises(MoezooError, match=r"no_plt: no GeoLife \.plt files"):
        read_gps_points(tmp_path / "no_plt")
    plt = write(tmp_path / "bad.plt", PLT_HEADER + "39.9,116.3,0,100,39743.0,2008-10-22,25:61:00\n")
    with pytest.raises(MoezooError, match=r"bad\.plt: 1 of 1 rows .* first: column date and time, "
                       r"'2008-10-22 25:61:00' \(row 1\)"):
        read_gps_points(plt)
    with pytest.raises(MoezooError, match=r"points: missing column\(s\) time of the GPS points frame"):
        stay_points(pd.DataFrame({"user": ["a"], "latitude": [1.0], "longitude": [2.0]}))


# ----------------------------------------------------------------------------------------------------- stay points

BASE = pd.Timestamp("2008-10-23 08:00:00")
STEP_S = 30  # one fix every 30 s


def offset_point(latitude: float, longitude: float, north_m: float, east_m: float) -> tuple[float, float]:
    return (latitude + math.degrees(north_m / EARTH_RADIUS_M),
            longitude + math.degrees(east_m / (EARTH_RADIUS_M * math.cos(math.radians(latitude)))))


def dwell(latitude: float, longitude: float, fixes: int) -> list[tuple[float, float]]:
    """Fixes jittering 15 m around a centre, in pairs of opposite offsets, so their mean is the centre."""
    jitter = [(15.0, 0.0), (-15.0, 0.0), (0.0, 15.0), (0.0, -15.0)]
    return [offset_point(latitude, longitude, *jitter[k % 4]) for k in range(fixes)]


def ride(start: tuple[float, float], fixes: int, step_m: float = 250.0) -> list[tuple[float, float]]:
    """Fixes 250 m apart heading east (farther than the 200 m stay distance from each other)."""
    return [offset_point(*start, 0.0, step_m * (k + 1)) for k in range(fixes)]


def track(user: str, segments: list[list[tuple[float, float]]], start: pd.Timestamp = BASE) -> pd.DataFrame:
    coordinates = [point for segment in segments for point in segment]
    return pd.DataFrame({"user": user, "time": [start + pd.Timedelta(seconds=STEP_S * k)
                                                 for k in range(len(coordinates))],
                         "latitude": [lat for lat, _ in coordinates], "longitude": [lon for _, lon in coordinates]})


def expected_cell(latitude: float, longitude: float, centre: tuple[float, float], cell_m: float) -> str:
    x = EARTH_RADIUS_M * math.cos(math.radians(centre[0])) * math.radians(longitude - centre[1])
    y = EARTH_RADIUS_M * math.radians(latitude - centre[0])
    return f"{math.floor(x / cell_m)}:{math.floor(y / cell_m)}"


def test_stay_points_on_a_synthetic_track():
    home, office = (39.9800, 116.3000), (39.9900, 116.3300)
    to_shop = ride(home, 12)
    shop = offset_point(*to_shop[-1], 0.0, 250.0)
    # home 30 min (60 fixes), ride, a 10-minute stop at a shop (under 20 min: not a stay), ride, office 40 min
    # (80 fixes), ride away; user "v" stays 25 min at home, starting later, and its rows come first (unsorted input)
    segments = [dwell(*home, 60), to_shop, dwell(*shop, 20), ride(shop, 10), dwell(*office, 80), ride(office, 5)]
    points = pd.concat([track("v", [dwell(*home, 50), ride(home, 3)], BASE + pd.Timedelta(days=1)),
                        track("u", segments)], ignore_index=True)
    frame = stay_points(points)
    assert_standard(frame)
    assert frame["user"].tolist() == ["u", "u", "v"]
    assert frame["category"].tolist() == ["", "", ""] and set(frame["city"]) == {"GeoLife"}
    office_arrival = BASE + pd.Timedelta(seconds=STEP_S * (60 + 12 + 20 + 10))
    assert frame["time"].tolist() == [BASE, office_arrival, BASE + pd.Timedelta(days=1)]
    np.testing.assert_allclose(frame["latitude"], [home[0], office[0], home[0]], atol=1e-9)
    np.testing.assert_allclose(frame["longitude"], [home[1], office[1], home[1]], atol=1e-9)
    centre = (points["latitude"].mean(), points["longitude"].mean())
    assert frame.attrs["grid"] == pytest.approx({"latitude": centre[0], "longitude": centre[1], "cell_m": 250.0})
    assert frame["location"].tolist() == [expected_cell(*home, centre, 250.0), expected_cell(*office, centre, 250.0),
                                          expected_cell(*home, centre, 250.0)]
    assert frame["location"].iloc[0] != frame["location"].iloc[1]
    assert frame.attrs["dropped"] == {"fix not in a stay point": len(points) - 60 - 80 - 50}
    # the shop becomes a stay with a shorter duration; the grid's centre is the corner of cell 0:0, so with 100 km
    # cells every stay is in one of the four cells around it
    assert len(stay_points(points, duration_min=9.0)) == 4
    assert set(stay_points(points, cell_m=100_000.0)["location"]) <= {"-1:-1", "-1:0", "0:-1", "0:0"}
    corner = offset_point(*home, -100.0, -100.0)  # a grid pinned 100 m south-west of home: the office is 2.56 km
    pinned = stay_points(points, grid_centre=corner)  # east and 1.11 km north of home
    assert pinned["location"].tolist() == ["0:0", "10:4", "0:0"] and pinned.attrs["grid"]["latitude"] == corner[0]


def test_stay_points_at_the_end_of_a_track_and_when_there_are_none():
    home = (39.98, 116.30)
    ends_home = track("u", [ride(home, 4), dwell(*home, 41)])  # 20 minutes from the first to the last home fix
    frame = stay_points(ends_home)
    assert frame["time"].tolist() == [BASE + pd.Timedelta(seconds=STEP_S * 4)]
    with pytest.raises(MoezooError, match=r"points: no stay points \(44 fixes; none stays within 200 m for 20 min\)"):
        stay_points(track("u", [ride(home, 4), dwell(*home, 40)]))


def reference_stay_points(points: pd.DataFrame, distance_m: float, duration_min: float) -> list[tuple]:
    """Li et al. 2008 with plain loops (and the same rule for a run lasting to the user's last fix)."""

    def haversine(lat1, lon1, lat2, lon2):
        lat1, lon1, lat2, lon2 = map(math.radians, (lat1, lon1, lat2, lon2))
        a = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
        return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(min(a, 1.0)))

    stays = []
    for user, fixes in points.sort_values(["user", "time"], kind="stable").groupby("user", sort=True):
        lat, lon, when = fixes["latitude"].tolist(), fixes["longitude"].tolist(), fixes["time"].tolist()
        i = 0
        while i < len(lat):
            j = i + 1
            while j < len(lat) and haversine(lat[i], lon[i], lat[j], lon[j]) <= distance_m:
                j += 1
            if (when[j] if j < len(lat) else when[-1]) - when[i] >= pd.Timedelta(minutes=duration_min):
                stays.append((user, when[i], sum(lat[i:j]) / (j - i), sum(lon[i:j]) / (j - i)))
                i = j
            else:
                i += 1
    return stays


def test_stay_points_match_a_plain_implementation_on_random_walks():
    generator = np.random.default_rng(0)
    frames = []
    for user in ("a", "b"):
        # steps of mostly 0 to 60 m (long still spells) every 1 to 40 s, with a few gaps of hours
        steps = generator.exponential(15.0, 3000) * (generator.random(3000) < 0.6)
        heading = np.cumsum(generator.normal(0.0, 0.6, 3000))
        north, east = np.cumsum(steps * np.cos(heading)), np.cumsum(steps * np.sin(heading))
        seconds = np.cumsum(generator.integers(1, 40, 3000) + 10_800 * (generator.random(3000) < 0.002))
        frames.append(pd.DataFrame({"user": user, "time": BASE + pd.to_timedelta(seconds, unit="s"),
                                    "latitude": 39.9 + np.degrees(north / EARTH_RADIUS_M),
                                    "longitude": 116.3 + np.degrees(east / (EARTH_RADIUS_M * math.cos(0.6964)))}))
    points = pd.concat(frames, ignore_index=True)
    expected = reference_stay_points(points, 200.0, 20.0)
    frame = stay_points(points)
    assert 20 < len(expected) == len(frame)
    assert list(zip(frame["user"], frame["time"])) == [(user, when) for user, when, _, _ in expected]
    np.testing.assert_allclose(frame["latitude"], [lat for _, _, lat, _ in expected], rtol=0, atol=1e-9)
    np.testing.assert_allclose(frame["longitude"], [lon for _, _, _, lon in expected], rtol=0, atol=1e-9)


# ----------------------------------------------------------------------------------------------- real shared data


def test_real_getnext_test_split():
    frame = read_getnext_csv(needs_shared("foursquare_nyc_getnext/NYC_test.csv.gz"))
    assert_standard(frame)
    assert len(frame) == 10_944 and frame.attrs["dropped"] == {}
    assert frame["time"].dt.year.isin([2012, 2013]).all()
    assert frame["latitude"].between(40.0, 41.5).all() and frame["longitude"].between(-75.0, -73.0).all()
    assert "Café" in set(frame["category"])
    first = frame[(frame["user"] == "1") & (frame["location"] == "3fd66200f964a520c7f11ee3")]
    # Sat Jul 07 02:12:49 +0000 2012 at -240 minutes
    assert pd.Timestamp("2012-07-06 22:12:49") in set(first["time"])


def test_real_rows_as_raw_tsmc2014_read_the_same(tmp_path):
    source = needs_shared("foursquare_nyc_getnext/NYC_test.csv.gz")
    table = pd.read_csv(source, dtype=str).iloc[:, :8]
    raw = tmp_path / "dataset_TSMC2014_NYC.txt"
    table.to_csv(raw, sep="\t", header=False, index=False, encoding="latin-1")
    pd.testing.assert_frame_equal(read_tsmc2014(raw), read_getnext_csv(source))


def test_real_stan_checkins():
    frame = read_stan(needs_shared("foursquare_nyc_stan/checkins.csv.gz"),
                      needs_shared("foursquare_nyc_stan/pois.csv.gz"))
    assert_standard(frame)
    assert len(frame) == 147_938 and frame["user"].nunique() == 1083 and frame["location"].nunique() <= 5135
    assert frame["latitude"].notna().all() and frame["time"].dt.year.isin([2012, 2013]).all()


def test_real_mielab_splits():
    foursquare = read_mielab_csv(needs_shared("foursquare_mielab/foursquare_test.csv.gz"), city="NYC")
    assert_standard(foursquare)
    assert len(foursquare) == 18_598 and foursquare["latitude"].abs().max() <= 1.0
    geolife = read_mielab_csv(needs_shared("geolife_mielab/geolife_test.csv.gz"), city="Beijing")
    assert_standard(geolife)
    assert len(geolife) == 4_163 and geolife["latitude"].isna().all() and geolife["user"].nunique() <= 45


def test_real_skmob_sample_stay_points():
    points = read_gps_points(needs_shared("geolife_gps/skmob_geolife_sample.txt.gz"))
    assert len(points) == 217_653 and set(points["user"]) == {"001", "005"}
    assert points["time"].min() == pd.Timestamp("2008-10-23 05:53:05")
    started = time.perf_counter()
    frame = stay_points(points)
    seconds = time.perf_counter() - started
    assert_standard(frame)
    assert seconds < 30
    assert 400 <= len(frame) <= 500  # 451 measured (185 for 001, 266 for 005) with 200 m, 20 min
    assert set(frame["user"]) == {"001", "005"} and 50 <= frame["location"].nunique() <= len(frame)
    assert frame.attrs["dropped"]["fix not in a stay point"] < len(points)


def test_real_movingpandas_file_and_the_same_points_as_a_geolife_tree(tmp_path):
    points = read_gps_points(needs_shared("geolife_gps/movingpandas_demodata_geolife.csv.gz"))
    assert len(points) == 5_908 and set(points["user"]) == {"0", "2", "19"}
    assert points["latitude"].between(39.0, 41.0).all() and points["longitude"].between(115.0, 118.0).all()
    for user, fixes in points.groupby("user"):
        folder = tmp_path / "Data" / user.zfill(3) / "Trajectory"
        folder.mkdir(parents=True)
        rows = [f"{lat!r},{lon!r},0,0,0,{when:%Y-%m-%d},{when:%H:%M:%S}"
                for lat, lon, when in zip(fixes["latitude"], fixes["longitude"], fixes["time"])]
        write(folder / "20080101000000.plt", PLT_HEADER + "\n".join(rows) + "\n")
    tree = read_gps_points(tmp_path)
    assert sorted(tree["user"].unique()) == ["000", "002", "019"] and len(tree) == len(points)
    expected = points.assign(user=points["user"].str.zfill(3)).sort_values(["user", "time"], kind="stable")
    np.testing.assert_array_equal(tree["latitude"], expected["latitude"])
    np.testing.assert_array_equal(tree["time"], expected["time"])
