from __future__ import annotations

from ..base.model import AdapterTuner
from .layer import HyperLayer


class HyperAdapterModel(AdapterTuner):
    """Hypernetwork adapters on their own (one route). Their use is as the kind of a controller:
    ``AdapterControllerConfig(tasks=[...], adapter=HyperAdapterConfig())``, one route per task."""

    prefix: str = "hyper_adapter_"
    tuner_layer_cls = HyperLayer
