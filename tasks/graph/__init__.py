"""Graph node classification: Mowst / Mowst* (mixture of a weak MLP and a strong GNN expert) and the experts alone."""

from .data import GraphData
from .model import NodeClassifier
from .mowst import Mowst

__all__ = ["GraphData", "Mowst", "NodeClassifier"]
