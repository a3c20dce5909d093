"""Training: the TaskModule base and the callbacks every run gets."""

from .callbacks import ExpertLoadHeatmap, MetricsJson, PredictionWriter, plot_expert_load, plot_load_by_label, pyplot
from .task import TaskModule

__all__ = ["ExpertLoadHeatmap", "MetricsJson", "PredictionWriter", "TaskModule", "plot_expert_load",
           "plot_load_by_label", "pyplot"]
