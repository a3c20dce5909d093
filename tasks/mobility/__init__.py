"""Human mobility: next-location prediction with MoE transformers (MoveGCL's mobility-aware router, TrajMoE's
spatially-aware router with a shared expert), a dense transformer and the first-order Markov baseline, on
generated multi-city check-ins or real Foursquare / GeoLife data."""

from .data import MobilityData
from .markov import MarkovModel
from .model import NextLocationModel

__all__ = ["MarkovModel", "MobilityData", "NextLocationModel"]
