from __future__ import annotations

from ..base.model import AdapterTuner
from .layer import CompacterLayer


class CompacterModel(AdapterTuner):
    """Adds Compacter / Compacter++ adapters (PHM bottlenecks) at the Houlsby or Pfeiffer positions.

    The shared rule lives in the adapted layers, not on this class, so transformers' ``load_adapter`` (which injects
    layers without keeping the tuner) works too; it is registered, and so saved, exactly once.
    """

    prefix: str = "compacter_"
    tuner_layer_cls = CompacterLayer
