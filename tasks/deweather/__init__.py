"""Deweathering: MoFME (mixture of feature-modulation experts) all-weather image restoration."""

from .data import WeatherData
from .model import DeweatherModel

__all__ = ["DeweatherModel", "WeatherData"]
