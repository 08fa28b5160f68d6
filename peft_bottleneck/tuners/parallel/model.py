from __future__ import annotations

from ..base.model import AdapterTuner
from .layer import ParallelAdapterLayer


class ParallelAdapterModel(AdapterTuner):
    """Adds parallel adapters (He et al. 2022) beside the feed-forward blocks, or beside chosen linear layers."""

    prefix: str = "parallel_adapter_"
    tuner_layer_cls = ParallelAdapterLayer
