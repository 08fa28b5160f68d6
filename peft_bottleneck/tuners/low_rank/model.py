from __future__ import annotations

from ..base.model import AdapterTuner
from .layer import LowRankLayer


class LowRankModel(AdapterTuner):
    """Adds low-rank bottleneck adapters at the Houlsby or Pfeiffer positions."""

    prefix: str = "low_rank_adapter_"
    tuner_layer_cls = LowRankLayer
