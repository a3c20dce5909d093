"""Deweathering: MoFME (mixture of feature-modulation experts) all-weather image restoration."""

from .model import DeweatherModel

__all__ = ["DeweatherModel"]
