from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Union

from ...registration import peft_type
from ..base.config import check_number
from ..bottleneck.config import BottleneckConfig


@dataclass
class HyperAdapterConfig(BottleneckConfig):
    """Task-conditioned hypernetwork adapters (hyperformer, Mahabadi et al. 2021), as the ``adapter=`` of an
    ``AdapterControllerConfig``: one hypernetwork shared by every adapted layer maps (task embedding, layer
    embedding) to that layer's down- and up-projection, so a task costs one embedding. Every adapted module must have
    the same sizes (the Houlsby or Pfeiffer positions of one model do)."""

    task_embedding_dim: int = field(default=64, metadata={"help": "Size of each task's embedding."})
    layer_embedding_dim: int = field(
        default=16, metadata={"help": "Size of each adapted module's embedding (it tells layers and positions apart)."}
    )
    hypernetwork_dim: int = field(default=64, metadata={"help": "Hidden size of the hypernetwork."})
    init_weights: Union[bool, str] = field(
        default=True,
        metadata={"help": "True: the up-projection's generator starts at zero, so a fresh adapter is the identity "
                  "for every task. False: random (tests)."},
    )
    init_weights_choices: ClassVar[tuple] = (True, False)

    def __post_init__(self):
        super().__post_init__()
        for name in ("task_embedding_dim", "layer_embedding_dim", "hypernetwork_dim"):
            check_number(self, name, 1, 4096, integer=True)

    def own_peft_type(self):
        return peft_type("HYPER_ADAPTER")
