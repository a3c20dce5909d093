"""From a visits frame to next-location samples: sessions, filters, a chronological split per user, features.

Steps (deterministic; ``MobilityData`` caches the result by its arguments):

1. **Sessions:** a user's visits are cut where two visits are more than ``session_gap_hours`` apart; sessions with
   fewer than ``min_session_length`` visits are dropped.
2. **Filters:** locations visited fewer than ``min_location_visits`` times and then users left with fewer than
   ``min_user_visits`` visits are dropped. Every drop is counted by reason (``Prepared.dropped``); keeping under
   ``min_kept_fraction`` of the rows is an error naming the thresholds, never a silent loss.
3. **Split:** per user, chronologically: the first ``train_fraction`` of the visits are training targets, the next
   ``val_fraction`` validation, the rest test (a user's history always precedes the targets it predicts).
4. **Features per visit:** location id (1..N, 0 = padding), category id, hour of the week (0-167), the time gap to
   the previous visit and the jump distance from it (bins, 0 for the first visit), coordinates normalised per city,
   and the location's visit pattern (its training visits' hour-of-day histogram). Per user: city id, and bins of
   the radius of gyration and of the location entropy of its training visits (quartiles over training users).
5. **Windows:** inputs of ``max_len`` consecutive visits, each position predicting the next visit; a window marks
   the targets of one split only (``mask``), with up to ``max_len - 1`` earlier visits of any split as history.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from moezoo.errors import MoezooError

GAP_EDGES_H = (1.0, 3.0, 6.0, 12.0, 24.0, 72.0)  # time-gap bins (hours): 1 + index of the first edge above it
DISTANCE_EDGES_KM = (0.05, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0)  # jump-distance bins (km), first: the same place
NUM_GAP_BINS = len(GAP_EDGES_H) + 2  # 0: first visit
NUM_DISTANCE_BINS = len(DISTANCE_EDGES_KM) + 3  # 0: first visit, last: unknown coordinates
NUM_USER_BINS = 4  # quartiles of gyration and of entropy over the training users
PATTERN_BINS = 24


def haversine_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    lat1, lon1, lat2, lon2 = (np.radians(np.asarray(v, dtype=float)) for v in (lat1, lon1, lat2, lon2))
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 6371.0088 * 2 * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


@dataclass
class Prepared:
    """The visits after filtering, encoded, with the vocabularies and per-user / per-location features."""

    visits: pd.DataFrame  # one row per kept visit, sorted by (user, time), with the encoded columns below
    locations: list[str]  # id i + 1 -> the dataset's location id
    categories: list[str]  # id i + 1 -> category name (0: unknown)
    cities: list[str]
    users: list[str]
    patterns: np.ndarray  # [N + 1, 24] each location's training hour-of-day histogram (row 0: padding)
    dropped: dict[str, int] = field(default_factory=dict)
    rows_in: int = 0

    @property
    def num_locations(self) -> int:
        return len(self.locations)

    def summary(self) -> str:
        drops = ", ".join(f"{n} {reason}" for reason, n in self.dropped.items() if n) or "none"
        return (f"{len(self.visits)} of {self.rows_in} visits kept ({len(self.users)} users, {self.num_locations} "
                f"locations, {len(self.cities)} cities); dropped: {drops}")


def vocabulary_digest(names: list[str]) -> str:
    """A short fingerprint of a vocabulary (the location ids in order): what a model and its data must share."""
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def extend(base: list[str] | None, names) -> list[str]:
    """``base`` (kept in its order, so its ids stay) followed by the other ``names``, sorted."""
    base = list(base or [])
    known = set(base)
    return base + sorted(n for n in set(names) if n not in known)


def prepare(frame: pd.DataFrame, *, session_gap_hours: float = 72.0, min_session_length: int = 2,
            min_location_visits: int = 2, min_user_visits: int = 10, train_fraction: float = 0.7,
            val_fraction: float = 0.1, min_kept_fraction: float = 0.2, source: str = "data",
            base: dict[str, list[str]] | None = None) -> Prepared:
    """Steps 1-4 of the module docstring on a standard visits frame (``formats.VISIT_COLUMNS``). ``base``: the
    ``locations``, ``categories`` and ``cities`` of an earlier vocabulary (a model's that this data extends): they
    keep their ids, and what is new here is appended."""
    base = base or {}
    rows_in = len(frame)
    dropped = dict(frame.attrs.get("dropped", {}))
    rows_in += sum(dropped.values())
    visits = frame.sort_values(["user", "time"], kind="stable").reset_index(drop=True).copy()
    # 1. sessions
    gap = visits.groupby("user").time.diff().dt.total_seconds().div(3600.0)
    visits["session"] = ((gap > session_gap_hours) | gap.isna()).cumsum()
    size = visits.groupby("session").session.transform("size")
    short = size < min_session_length
    dropped[f"in sessions shorter than {min_session_length}"] = int(short.sum())
    visits = visits[~short]
    # 2. rare locations, then users with too little left
    counts = visits.location.map(visits.location.value_counts())
    rare = counts < min_location_visits
    dropped[f"at locations visited fewer than {min_location_visits} times"] = int(rare.sum())
    visits = visits[~rare]
    per_user = visits.user.map(visits.user.value_counts())
    few = per_user < min_user_visits
    dropped[f"of users with fewer than {min_user_visits} visits"] = int(few.sum())
    visits = visits[~few].reset_index(drop=True)
    if len(visits) < max(1, min_kept_fraction * rows_in):
        raise MoezooError(f"{source}: only {len(visits)} of {rows_in} visits are left after filtering "
                          f"(session_gap_hours={session_gap_hours}, min_session_length={min_session_length}, "
                          f"min_location_visits={min_location_visits}, min_user_visits={min_user_visits}); "
                          "lower the thresholds")
    # 3. chronological split per user
    rank = visits.groupby("user").cumcount()
    total = visits.user.map(visits.user.value_counts())
    train_end = np.maximum(2, np.floor(total * train_fraction + 1e-9)).astype(int)
    val_end = np.maximum(train_end + 1, np.floor(total * (train_fraction + val_fraction) + 1e-9)).astype(int)
    visits["split"] = np.where(rank < train_end, 0, np.where(rank < val_end, 1, 2))
    # 4. encodings and features
    locations = extend(base.get("locations"), visits.location.unique())
    visits["location_id"] = visits.location.map({loc: i + 1 for i, loc in enumerate(locations)}).astype(np.int64)
    categories = extend(base.get("categories"), (c for c in visits.category.fillna("").unique() if c))
    visits["category_id"] = visits.category.fillna("").map(
        {c: i + 1 for i, c in enumerate(categories)} | {"": 0}).astype(np.int64)
    cities = extend(base.get("cities"), visits.city.unique())
    visits["city_id"] = visits.city.map({c: i for i, c in enumerate(cities)}).astype(np.int64)
    users = sorted(visits.user.unique())
    visits["user_id"] = visits.user.map({u: i for i, u in enumerate(users)}).astype(np.int64)
    visits["hour_of_week"] = (visits.time.dt.dayofweek * 24 + visits.time.dt.hour).astype(np.int64)
    first = visits.user.ne(visits.user.shift())
    gap_h = visits.time.diff().dt.total_seconds().div(3600.0).to_numpy()
    visits["gap_bin"] = np.where(first, 0, 1 + np.searchsorted(GAP_EDGES_H, gap_h, side="right"))
    lat, lon = visits.latitude.to_numpy(float), visits.longitude.to_numpy(float)
    jump = haversine_km(np.roll(lat, 1), np.roll(lon, 1), lat, lon)
    distance_bin = 1 + np.searchsorted(DISTANCE_EDGES_KM, jump, side="right")
    distance_bin = np.where(np.isnan(jump), NUM_DISTANCE_BINS - 1, distance_bin)
    visits["distance_bin"] = np.where(first, 0, distance_bin)
    for axis, column in (("x", "longitude"), ("y", "latitude")):
        values = visits[column].astype(float)
        mean = values.groupby(visits.city).transform("mean")
        std = values.groupby(visits.city).transform("std").replace(0.0, 1.0).fillna(1.0)
        visits[axis] = ((values - mean) / std).fillna(0.0).astype(np.float32)
    train = visits[visits.split == 0]
    patterns = np.zeros((len(locations) + 1, PATTERN_BINS), dtype=np.float32)
    np.add.at(patterns, (train.location_id.to_numpy(), train.time.dt.hour.to_numpy()), 1.0)
    patterns /= np.maximum(patterns.sum(1, keepdims=True), 1.0)
    gyration, entropy = _user_mobility(train)
    for name, values in (("gyration", gyration), ("entropy", entropy)):
        edges = np.nanquantile(values.to_numpy(), [0.25, 0.5, 0.75]) if len(values) else np.zeros(3)
        bins = pd.Series(np.searchsorted(edges, values.to_numpy(), side="right"), index=values.index)
        visits[f"{name}_bin"] = visits.user.map(bins).fillna(0).astype(np.int64)
        visits[name] = visits.user.map(values).astype(np.float32)
    return Prepared(visits=visits, locations=locations, categories=categories, cities=cities, users=users,
                    patterns=patterns, dropped=dropped, rows_in=rows_in)


def _user_mobility(train: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Per user: radius of gyration (km, RMS distance of its visits from their centroid; 0 without coordinates)
    and the Shannon entropy (nats) of its location distribution, over its training visits."""
    lat = train.latitude.astype(float)
    lon = train.longitude.astype(float)
    centre_lat = lat.groupby(train.user).transform("mean")
    centre_lon = lon.groupby(train.user).transform("mean")
    squared = pd.Series(haversine_km(lat, lon, centre_lat, centre_lon) ** 2, index=train.index)
    gyration = squared.groupby(train.user).mean().pow(0.5).fillna(0.0)
    shares = train.groupby(["user", "location_id"]).size() / train.groupby("user").size()
    entropy = (-shares * np.log(shares)).groupby(level=0).sum()
    return gyration, entropy


TOKEN_FEATURES = ("location_id", "category_id", "hour_of_week", "gap_bin", "distance_bin")


class WindowDataset(Dataset):
    """Windows of one split (module docstring, step 5). Each item is a dict of tensors:

    ``locations``, ``categories``, ``hours``, ``gap_bins``, ``distance_bins`` [L] long (0-padded at the right),
    ``coords`` [L, 2] (normalised per city), ``latlon`` [L, 2] (degrees; NaN when unknown), ``patterns`` [L, 24]
    float (the input visits' features), ``targets`` [L] long (the next
    location id at each position, 0 = none), ``target_categories`` [L], ``mask`` [L] bool (a target of this split),
    and per sample ``city``, ``user``, ``gyration_bin``, ``entropy_bin`` (long scalars).
    """

    def __init__(self, prepared: Prepared, split: int, max_len: int):
        if max_len < 2:
            raise MoezooError(f"data.max_len: must be at least 2, got {max_len}")
        self.prepared, self.max_len = prepared, max_len
        visits = prepared.visits
        self.columns = {c: torch.tensor(visits[c].to_numpy()) for c in TOKEN_FEATURES}
        self.coords = torch.as_tensor(visits[["x", "y"]].to_numpy(np.float32))
        self.latlon = torch.as_tensor(visits[["latitude", "longitude"]].to_numpy(np.float32))
        self.patterns = torch.as_tensor(prepared.patterns)
        self.user_columns = {c: torch.tensor(visits[c].to_numpy()) for c in
                             ("city_id", "user_id", "gyration_bin", "entropy_bin")}
        self.windows: list[tuple[int, int, int]] = []  # (input start, input end, first target row of the split)
        starts = np.flatnonzero(visits.user.ne(visits.user.shift()).to_numpy())
        ends = np.append(starts[1:], len(visits))
        split_rows = visits.split.to_numpy() == split
        for begin, end in zip(starts, ends):
            targets = np.flatnonzero(split_rows[begin:end]) + begin  # rows of this user whose visit is a target
            targets = targets[targets > begin]  # the first visit has no history
            if not len(targets):
                continue
            chunk = max_len
            for first in range(int(targets[0]), int(targets[-1]) + 1, chunk):
                last = min(first + chunk, int(targets[-1]) + 1)  # target rows [first, last)
                start = max(begin, last - 1 - max_len)
                self.windows.append((start, last - 1, first))

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        start, stop, first_target = self.windows[index]
        pad = self.max_len - (stop - start)
        rows = torch.arange(start, stop)
        item = {}
        names = {"location_id": "locations", "category_id": "categories", "hour_of_week": "hours",
                 "gap_bin": "gap_bins", "distance_bin": "distance_bins"}
        for column, name in names.items():
            item[name] = torch.nn.functional.pad(self.columns[column][rows], (0, pad))
        item["coords"] = torch.nn.functional.pad(self.coords[rows], (0, 0, 0, pad))
        item["latlon"] = torch.nn.functional.pad(self.latlon[rows], (0, 0, 0, pad))
        item["patterns"] = self.patterns[item["locations"]]
        target_rows = rows + 1
        item["targets"] = torch.nn.functional.pad(self.columns["location_id"][target_rows], (0, pad))
        item["target_categories"] = torch.nn.functional.pad(self.columns["category_id"][target_rows], (0, pad))
        item["mask"] = torch.nn.functional.pad(target_rows >= first_target, (0, pad))
        for column, name in (("city_id", "city"), ("user_id", "user"), ("gyration_bin", "gyration_bin"),
                             ("entropy_bin", "entropy_bin")):
            item[name] = self.user_columns[column][start]
        return item
