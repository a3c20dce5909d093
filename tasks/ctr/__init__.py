"""CTR family: multi-task and multi-domain recommendation MoE (MMoE, PLE/CGC, HoME, AdaptDHM) on tabular click data."""

from .adaptdhm import AdaptDHM
from .home import HoME
from .mmoe import MMoE
from .model import CTRTask
from .ple import PLE

__all__ = ["PLE", "AdaptDHM", "CTRTask", "HoME", "MMoE"]
