"""ShipsEar's vessel types and its five classes (Santos-Dominguez et al. 2016, "ShipsEar: An underwater vessel
noise database", Applied Acoustics 113, table 3), for writing a manifest of ShipsEar recordings.

    A  fishing boats, trawlers, mussel boats, tugboats, dredgers
    B  motorboats, pilot boats, sailboats
    C  passenger ferries
    D  ocean liners, ro-ro vessels
    E  background (natural ambient) noise

CMoE's official test set (github.com/xy980523/UATR-CMoE ``test.py``) keeps 9 of the vessel types as classes instead;
either labelling is a manifest's ``label`` column.
"""

from __future__ import annotations

from moezoo.errors import MoezooError

SHIPSEAR_CLASSES = {
    "fishboat": "A", "trawler": "A", "musselboat": "A", "tugboat": "A", "dredger": "A",
    "motorboat": "B", "pilotship": "B", "sailboat": "B",
    "passengers": "C",
    "oceanliner": "D", "roro": "D",
    "naturalnoise": "E",
}


def shipsear_class(vessel_type: str) -> str:
    """The ShipsEar class (A-E) of a vessel type as ShipsEar names it (``Fishboat``, ``RORO``, ``Natural noise``, ...;
    case, spaces, hyphens and underscores are ignored)."""
    key = "".join(ch for ch in vessel_type.lower() if ch.isalnum())
    if key not in SHIPSEAR_CLASSES:
        raise MoezooError(f"ShipsEar: unknown vessel type {vessel_type!r}; known: {', '.join(SHIPSEAR_CLASSES)}")
    return SHIPSEAR_CLASSES[key]
