from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from ...registration import peft_type
from ..bottleneck.config import AdapterConfigBase


@dataclass
class ParallelAdapterConfig(AdapterConfigBase):
    """Parallel adapter (He et al. 2022): ``out = F(x) + s * W_up f(W_down x)`` beside a module or block ``F``.

    By default it spans the feed-forward block of every layer: it reads the block's input and adds to the block's
    output (before the residual connection), like AdapterHub's ``par_bn`` preset (relu, reduction factor 2,
    scaling 4, Kaiming-uniform down and zero up). With ``target_modules`` it sits beside single linear layers.
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
        metadata={"help": "Factor s on the adapter output: a number, or 'learned' for a trained scalar (init 1)."},
    )
    input_from: Optional[dict[str, str]] = field(
        default=None,
        metadata={
            "help": "Maps a target name (suffix) to the module whose input the adapter reads, given as the suffix "
            "that replaces it, e.g. {'output.dense': 'intermediate'} for BERT: the adapter reads the feed-forward "
            "block's input (the input of `intermediate`) and adds to its output projection. Targets not listed "
            "read their own input. Filled from the architecture when target_modules is not set."
        },
    )

    def __post_init__(self):
        self.peft_type = peft_type("PARALLEL_ADAPTER")
        if self.input_from is not None and not (
            isinstance(self.input_from, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in self.input_from.items())
        ):
            raise ValueError(f"`input_from` must map target names to module names (dict[str, str]), got {self.input_from!r}.")
        super().__post_init__()
