"""CTR family: multi-task and multi-domain recommendation MoE (MMoE, PLE/CGC, HoME, AdaptDHM) on tabular click data."""

from .adaptdhm import AdaptDHM
from .data import CTRData
from .home import HoME
from .mmoe import MMoE
from .model import CTRTask
from .ple import PLE

__all__ = ["PLE", "AdaptDHM", "CTRData", "CTRTask", "HoME", "MMoE"]
