from ..base.kinds import register_adapter_type
from .config import LowRankConfig
from .layer import LowRankKind, LowRankLayer
from .model import LowRankModel

register_adapter_type("low_rank_adapter", LowRankConfig, LowRankModel, LowRankKind)

__all__ = ["LowRankConfig", "LowRankKind", "LowRankLayer", "LowRankModel"]
