from __future__ import annotations

from ..base.model import AdapterTuner
from .layer import BottleneckLayer


class BottleneckModel(AdapterTuner):
    """Adds sequential bottleneck adapters (Houlsby or Pfeiffer placement) to a transformers model.

    Example:

        ```py
        >>> import peft_bottleneck
        >>> from peft import get_peft_model
        >>> model = get_peft_model(base_model, peft_bottleneck.BottleneckConfig(task_type="SEQ_CLS"))
        ```
    """

    prefix: str = "bottleneck_"
    tuner_layer_cls = BottleneckLayer
