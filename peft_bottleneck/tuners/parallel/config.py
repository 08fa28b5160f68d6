from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from ...registration import peft_type
from ...target_modules import colliding_names
from ..base.config import AdapterConfigBase


@dataclass
class ParallelAdapterConfig(AdapterConfigBase):
    """Parallel adapter (He et al. 2022): ``out = F(x) + s * W_up f(W_down x)`` beside a module or block ``F``.

    By default it spans the feed-forward block of every layer: it reads the block's residual input and adds to the
    block's output, exactly like AdapterHub's ``par_bn`` (relu, reduction factor 2, scaling 4, Kaiming-uniform down
    and zero up). In pre-LN decoders (Llama, GPT-2) that input is the residual stream before the feed-forward
    LayerNorm, as in AdapterHub. With ``target_modules`` it sits beside single linear layers, reading their input.
    """

    reduction_factor: float = field(
        default=2,
        metadata={"help": "Bottleneck size = hidden size // reduction_factor (ignored when bottleneck_size is set)."},
    )
    non_linearity: Optional[str] = field(
        default="relu", metadata={"help": "Activation between the projections (see BottleneckConfig)."}
    )
    scaling: Union[float, str] = field(
        default=4.0,
        metadata={"help": "Factor s on the adapter output: a number, 'learned' or 'channel' (see BottleneckConfig)."},
    )
    is_parallel: bool = field(default=True, metadata={"help": "Always True for this type."})

    def __post_init__(self):
        self.peft_type = peft_type("PARALLEL_ADAPTER")
        super().__post_init__()
        if not self.is_parallel:
            raise ValueError("`is_parallel` must be True for ParallelAdapterConfig; use BottleneckConfig for "
                             "sequential adapters.")

    def default_targets(self, positions) -> tuple[list[str], list[str]]:
        return list(positions.ffn_block), colliding_names(positions.attention_output, positions.ffn_block)
