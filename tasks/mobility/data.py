"""MobilityData: per-user visit sequences as next-location windows, from generated or real check-ins / GPS.

Sources (``format``):
- ``synthetic`` (the default, no ``path``): the generated multi-city check-ins of ``moezoo.tasks.mobility.synthetic``.
- ``tsmc2014``: the raw Foursquare TSMC2014 file (tab-separated, 8 columns); ``getnext``: the GETNext-style CSV of
  the same check-ins; ``stan``: STAN's ``checkins.csv`` with ``pois`` (its POI table); ``mielab``: a mie-lab
  location-prediction CSV; ``gps``: GPS fixes (scikit-mobility CSV, MovingPandas CSV or a GeoLife ``Data/`` tree of
  PLT files), turned into stay points and grid-cell locations first. ``path`` may list several files of one format
  (e.g. the GETNext val and test files): they are read and concatenated, and the split is then made here,
  chronologically per user (a file's own split is not kept).

Preprocessing (``sequences.prepare``) is deterministic; its result is cached under ``$MOEZOO_CACHE/mobility`` keyed
by the files (path, size, modification time) and the arguments. The drops are counted and printed in one line, and
kept in ``summary``. Batches are dicts of tensors (``sequences.WindowDataset``).
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pandas as pd
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from moezoo.cache import cache_dir
from moezoo.errors import MoezooError
from moezoo.training.data import SplitDataModule

from . import synthetic
from .sequences import Prepared, WindowDataset, prepare, vocabulary_digest

FORMATS = ("synthetic", "tsmc2014", "getnext", "stan", "mielab", "gps")
SPLITS = {"train": 0, "val": 1, "test": 2}


def read_source(fmt: str, paths: list[Path], *, city: str, pois: Path | None, stay_distance_m: float,
                stay_minutes: float, cell_m: float, local_offset_min: float = 0.0) -> pd.DataFrame:
    """The standard visits frame of one or more files of format ``fmt`` (``formats``)."""
    from . import formats

    frames = []
    for path in paths:
        if fmt == "tsmc2014":
            frames.append(formats.read_tsmc2014(path, city=city))
        elif fmt == "getnext":
            frames.append(formats.read_getnext_csv(path, city=city))
        elif fmt == "stan":
            if pois is None:
                raise MoezooError("data.pois: the stan format needs its POI table (pois.csv) next to the check-ins")
            frames.append(formats.read_stan(path, pois, city=city))
        elif fmt == "mielab":
            frames.append(formats.read_mielab_csv(path, city=city))
        elif fmt == "gps":
            frames.append(formats.read_gps_points(path, local_offset_min=local_offset_min))
    if fmt == "gps":  # one grid over all the files' stay points, so their cell ids agree
        points = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        frames = [formats.stay_points(points, distance_m=stay_distance_m, duration_min=stay_minutes, cell_m=cell_m,
                                      city=city)]
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    dropped: dict[str, int] = {}
    for part in frames:
        for reason, count in part.attrs.get("dropped", {}).items():
            dropped[reason] = dropped.get(reason, 0) + count
    # GPS fixes between stays are not lost visits: a stay point stands for many fixes (reported, not counted as lost)
    frame.attrs["fixes_outside_stays"] = dropped.pop(formats.OUTSIDE_STAYS, 0)
    frame.attrs["dropped"] = dropped
    return frame


class MobilityData(SplitDataModule):
    """Next-location windows of per-user visit sequences (module docstring).

    Args:
        format: ``synthetic`` or a real format (module docstring); ``path``: its file(s) (a list for several).
        pois: STAN's POI table (``stan`` only); city: the city name given to a real file's visits.
        max_len: visits per window (each position predicts the next one).
        session_gap_hours, min_session_length, min_location_visits, min_user_visits: the filters
            (``sequences.prepare``); train_fraction, val_fraction: the chronological split per user.
        stay_distance_m, stay_minutes, cell_m: stay-point detection and location grid of the ``gps`` format;
            local_offset_min: minutes from the GPS fixes' clock (UTC for GeoLife) to local time (480 for Beijing).
        synthetic_users_per_city, synthetic_days, synthetic_seed: the generated default's size and seed.
        cities: keep only these cities' visits (e.g. the old cities of a continual run, or the new one).
        vocabulary: a ``moezoo fit --task mobility/...`` checkpoint whose vocabulary this data extends: its
            locations, categories and cities keep their ids and new ones are appended (the data of a city added to
            a trained model, ``--model.teacher`` the same checkpoint).
    """

    model_links = {"num_locations": "num_locations", "num_categories": "num_categories",
                   "num_cities": "num_cities", "max_len": "max_len", "city_names": "city_names",
                   "category_names": "category_names",
                   "vocabulary_digest": "vocabulary_digest", "base_vocabulary_digest": "base_vocabulary_digest"}

    def __init__(self, format: str = "synthetic", path: str | list[str] | None = None, pois: str | None = None,
                 city: str = "city", max_len: int = 32, session_gap_hours: float = 72.0,
                 min_session_length: int = 2, min_location_visits: int = 2, min_user_visits: int = 10,
                 train_fraction: float = 0.7, val_fraction: float = 0.1, stay_distance_m: float = 200.0,
                 stay_minutes: float = 20.0, cell_m: float = 250.0, local_offset_min: float = 0.0,
                 batch_size: int = 64, num_workers: int = 0,
                 synthetic_users_per_city: int = 100, synthetic_days: int = 56, synthetic_seed: int = 0,
                 cities: list[str] | None = None, vocabulary: str | None = None, cache: bool = True):
        super().__init__()
        if format not in FORMATS:
            raise MoezooError(f"data.format: {format!r} is not one of {', '.join(FORMATS)}")
        if format == "synthetic" and path is not None:
            raise MoezooError("data.path: give data.format too (one of " + ", ".join(FORMATS[1:]) + ")")
        if format != "synthetic" and path is None:
            raise MoezooError(f"data.path: the {format} format needs the file(s) to read")
        self.format = format
        self.paths = [] if path is None else [Path(p).expanduser() for p in ([path] if isinstance(path, str)
                                                                                else path)]
        for p in self.paths:
            if not p.exists():
                raise MoezooError(f"data.path: {p} does not exist")
        self.pois = None if pois is None else Path(pois).expanduser()
        self.city, self.max_len = city, max_len
        self.filters = dict(session_gap_hours=session_gap_hours, min_session_length=min_session_length,
                            min_location_visits=min_location_visits, min_user_visits=min_user_visits,
                            train_fraction=train_fraction, val_fraction=val_fraction)
        if not (0 < train_fraction < 1 and 0 <= val_fraction < 1 - train_fraction):
            raise MoezooError(f"data.train_fraction / val_fraction: need 0 < train < 1 and 0 <= val < 1 - train, got "
                              f"{train_fraction} / {val_fraction}")
        self.stay = dict(stay_distance_m=stay_distance_m, stay_minutes=stay_minutes, cell_m=cell_m,
                         local_offset_min=local_offset_min)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.synthetic = dict(users_per_city=synthetic_users_per_city, days=synthetic_days, seed=synthetic_seed)
        self.cache = cache
        self.cities = None if cities is None else list(cities)
        self.vocabulary = None if vocabulary is None else Path(vocabulary).expanduser()
        self.base = self._read_vocabulary(self.vocabulary) if self.vocabulary is not None else None
        self.prepared: Prepared | None = None

    @staticmethod
    def _read_vocabulary(path: Path) -> dict[str, list[str]]:
        """The locations, categories and cities a checkpoint's data module had (its ``state_dict``)."""
        if not path.is_file():
            raise MoezooError(f"data.vocabulary: {path} is not a checkpoint file")
        import torch

        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:
            raise MoezooError(f"data.vocabulary: cannot read {path}: {err}") from None
        state = checkpoint.get(MobilityData.__qualname__)
        if not state or "locations" not in state:
            raise MoezooError(f"data.vocabulary: {path} holds no mobility data vocabulary (a `moezoo fit --task "
                              "mobility/...` checkpoint has one)")
        return {k: list(state[k]) for k in ("locations", "categories", "cities")}

    # -- what the model is built with (linked) --------------------------------------------------------------------
    @property
    def num_locations(self) -> int:
        return self.get_prepared().num_locations

    @property
    def num_categories(self) -> int:
        return len(self.get_prepared().categories)

    @property
    def num_cities(self) -> int:
        return len(self.get_prepared().cities)

    @property
    def city_names(self) -> list[str]:
        return list(self.get_prepared().cities)

    @property
    def category_names(self) -> list[str]:
        return list(self.get_prepared().categories)

    @property
    def vocabulary_digest(self) -> str:
        return vocabulary_digest(self.get_prepared().locations)

    @property
    def base_vocabulary_digest(self) -> str | None:
        """The digest of the vocabulary this data extends (``vocabulary``), None if it extends none."""
        return None if self.base is None else vocabulary_digest(self.base["locations"])

    def state_dict(self) -> dict:
        """The vocabularies (Lightning writes them into every checkpoint: ``vocabulary`` reads them back)."""
        prepared = self.get_prepared()
        return {"locations": prepared.locations, "categories": prepared.categories, "cities": prepared.cities}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore: the vocabulary comes from the data and ``vocabulary`` (checked by the model's digest)."""

    @property
    def summary(self) -> str:
        return self.get_prepared().summary()

    # -- preprocessing --------------------------------------------------------------------------------------------
    def _key(self) -> str:
        files = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in self.paths + (
            [self.pois] if self.pois else [])]
        blob = json.dumps([self.format, files, self.city, self.filters, self.stay, self.synthetic, self.cities,
                           self.base, 1],
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def _read(self) -> pd.DataFrame:
        frame = self._read_all()
        if self.cities is None:
            return frame
        unknown = sorted(set(self.cities) - set(frame.city.unique()))
        if unknown:
            raise MoezooError(f"data.cities: {', '.join(unknown)} not in the data (it has "
                              f"{', '.join(sorted(frame.city.unique()))})")
        kept = frame[frame.city.isin(self.cities)].reset_index(drop=True)
        kept.attrs = dict(frame.attrs)
        return kept

    def _read_all(self) -> pd.DataFrame:
        if self.format == "synthetic":
            return synthetic.generate(self.synthetic["users_per_city"], self.synthetic["days"],
                                      seed=self.synthetic["seed"])
        return read_source(self.format, self.paths, city=self.city, pois=self.pois,
                           **self.stay)

    def get_prepared(self) -> Prepared:
        if self.prepared is not None:
            return self.prepared
        path = cache_dir() / "mobility" / f"{self._key()}.pkl"
        if self.cache and self.format != "synthetic" and path.exists():
            try:
                self.prepared = pickle.loads(path.read_bytes())
            except Exception:  # a damaged or stale cache entry: prepare again
                self.prepared = None
        if self.prepared is None:
            source = ", ".join(str(p) for p in self.paths) or "the generated check-ins"
            self.prepared = prepare(self._read(), source=source, base=self.base, **self.filters)
            if self.cache and self.format != "synthetic":
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(pickle.dumps(self.prepared))
                tmp.replace(path)
            rank_zero_info(f"mobility data: {self.prepared.summary()}")
        return self.prepared

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        prepared = self.get_prepared()
        self.splits = {name: WindowDataset(prepared, index, self.max_len) for name, index in SPLITS.items()}
        for name, dataset in self.splits.items():
            if not len(dataset):
                raise MoezooError(f"data: the {name} split has no targets ({prepared.summary()}); give more visits "
                                  "per user or change train_fraction / val_fraction")
