"""The embedded default: seeded multi-city check-ins with known structure (no download).

Each city has its own regime, so experts can specialise by city and by user type:

| city | spread of places (km) | exploration | what it is like |
|---|---|---|---|
| Compact | 2 | 0.05 | a small, dense city of routines: low gyration, low location entropy |
| Metro | 6 | 0.15 | a large city: commutes across town, some exploration |
| Sprawl | 14 | 0.35 | a spread-out region of long trips and many new places: high gyration and entropy |

A city's places sit in districts (Gaussian clusters), each place has a category (home, work, food, shop, leisure,
transit) whose mix depends on its district. A user lives at a home place, works at a work place, and has a few
favourite places near home or work. Two user types: ``commuter`` (weekday home -> work -> lunch -> work -> home or an
evening favourite; weekend favourites) and ``explorer`` (fewer fixed visits, twice the city's exploration rate). At
every move the user goes to the scheduled place, or with the exploration probability to a random place of the city
(nearer places likelier). Each visit is checked in with probability ``checkin_rate``, so sequences are as sparse as
real check-ins. Times are local; days start on Monday 2024-01-01.

The answer is known: a routine user's next place follows from the last place and the time (a Markov model with time
does well on Compact, poorly on Sprawl), and the city and the user type decide how predictable a sequence is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

CATEGORIES = ("home", "work", "food", "shop", "leisure", "transit")
USER_TYPES = ("commuter", "explorer")


@dataclass(frozen=True)
class City:
    name: str
    latitude: float
    longitude: float
    spread_km: float
    explore: float


CITIES = (
    City("Compact", 47.37, 8.54, 2.0, 0.05),
    City("Metro", 40.73, -73.99, 6.0, 0.15),
    City("Sprawl", 34.05, -118.24, 14.0, 0.35),
)
KM_PER_DEGREE = 111.32


def _places(city: City, count: int, rng: np.random.Generator) -> pd.DataFrame:
    districts = rng.normal(0.0, city.spread_km, size=(6, 2))
    # each district favours some categories: residential, business, mixed
    mixes = np.array([[0.55, 0.05, 0.15, 0.1, 0.1, 0.05], [0.05, 0.55, 0.2, 0.1, 0.05, 0.05],
                      [0.2, 0.15, 0.25, 0.15, 0.2, 0.05]])
    district = rng.integers(0, len(districts), size=count)
    xy = districts[district] + rng.normal(0.0, city.spread_km / 4, size=(count, 2))
    category = np.array([rng.choice(len(CATEGORIES), p=mixes[d % 3]) for d in district])
    for needed in range(2):  # every city has homes and workplaces
        if not (category == needed).any():
            category[needed] = needed
    lat = city.latitude + xy[:, 1] / KM_PER_DEGREE
    lon = city.longitude + xy[:, 0] / (KM_PER_DEGREE * np.cos(np.radians(city.latitude)))
    return pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "latitude": lat, "longitude": lon,
                         "category": [CATEGORIES[c] for c in category]})


def _nearby(places: pd.DataFrame, origin: np.ndarray, scale_km: float, rng: np.random.Generator,
            mask: np.ndarray | None = None) -> int:
    """A place drawn with probability decaying with distance from ``origin`` (km), among ``mask``."""
    distance = np.hypot(places.x.to_numpy() - origin[0], places.y.to_numpy() - origin[1])
    weight = np.exp(-distance / max(scale_km, 1e-3))
    if mask is not None:
        weight = weight * mask
    return int(rng.choice(len(places), p=weight / weight.sum()))


def generate(users_per_city: int = 100, days: int = 56, places_per_city: int = 150, checkin_rate: float = 0.8,
             seed: int = 0, cities: tuple[City, ...] = CITIES) -> pd.DataFrame:
    """Check-ins as the standard visits frame (``moezoo.tasks.mobility.formats``: user, location, time, latitude,
    longitude, category, city) plus ``user_type``; deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    rows = []
    start = pd.Timestamp("2024-01-01")  # a Monday
    for city in cities:
        places = _places(city, places_per_city, rng)
        xy = places[["x", "y"]].to_numpy()
        kind = places.category.to_numpy()
        for u in range(users_per_city):
            user_type = USER_TYPES[int(rng.random() < 0.4)]
            explore = city.explore * (2.0 if user_type == "explorer" else 1.0)
            home = int(rng.choice(np.flatnonzero(kind == "home")))
            work = _nearby(places, xy[home], city.spread_km, rng, kind == "work")
            favourites = [_nearby(places, xy[[home, work][i % 2]], city.spread_km / 3, rng,
                                  np.isin(kind, ("food", "shop", "leisure"))) for i in range(4)]
            lunch = _nearby(places, xy[work], city.spread_km / 6, rng, kind == "food")

            for day in range(days):
                weekday = day % 7
                here = home
                if weekday < 5 and (user_type == "commuter" or rng.random() < 0.5):
                    plan = [(7.5, work), (12.2, lunch), (13.2, work)]
                    evening = favourites[int(rng.integers(4))] if rng.random() < 0.4 else home
                    plan += [(17.8, evening)] + ([(20.5, home)] if evening != home else [])
                else:
                    outings = int(rng.integers(1, 4))
                    plan = [(10.0 + 3.0 * i, favourites[int(rng.integers(4))]) for i in range(outings)]
                    plan += [(19.5, home)]
                for hour, planned in plan:  # the plan, or with probability `explore` a random place nearby
                    here = _nearby(places, xy[here], city.spread_km, rng) if rng.random() < explore else planned
                    if rng.random() < checkin_rate:
                        minutes = (hour + rng.normal(0.0, 0.4)) * 60.0
                        rows.append((f"{city.name}-{u:03d}", f"{city.name}-{here:03d}",
                                     start + pd.Timedelta(days=day, minutes=float(np.clip(minutes, 0, 1439))),
                                     float(places.latitude[here]), float(places.longitude[here]),
                                     str(kind[here]), city.name, user_type))
    frame = pd.DataFrame(rows, columns=["user", "location", "time", "latitude", "longitude", "category", "city",
                                        "user_type"])
    frame = frame.sort_values(["user", "time"], kind="stable").reset_index(drop=True)
    frame.attrs["source"] = f"generated (seed {seed})"
    frame.attrs["dropped"] = {}
    return frame
