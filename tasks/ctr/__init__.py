"""CTR family: multi-task and multi-domain recommendation MoE (MMoE, PLE/CGC, HoME, AdaptDHM) on tabular click data.

``CTRTask`` takes its network by dependency injection: ``MMoENet``, ``PLENet``, ``HoMENet`` or ``AdaptDHMNet``.
"""

from .adaptdhm import AdaptDHMNet
from .data import CTRData
from .home import HoMENet
from .mmoe import MMoENet
from .model import CTRTask
from .ple import PLENet

__all__ = ["AdaptDHMNet", "CTRData", "CTRTask", "HoMENet", "MMoENet", "PLENet"]
