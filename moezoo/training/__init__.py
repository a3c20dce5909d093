"""Training: the TaskModule base and the callbacks every run gets."""

from .averaging import WarmupEMA
from .callbacks import ExpertLoadHeatmap, MetricsJson, PredictionWriter, plot_expert_load, plot_load_by_label, pyplot
from .data import SplitDataModule, image_folder, load_digits_images, stratified_split
from .parallel import ExpertParallelStrategy
from .task import TaskModule

__all__ = ["ExpertLoadHeatmap", "ExpertParallelStrategy", "MetricsJson",
           "PredictionWriter", "SplitDataModule", "TaskModule", "plot_expert_load",
           "plot_load_by_label", "pyplot", "WarmupEMA",
           "image_folder", "load_digits_images", "stratified_split"]
