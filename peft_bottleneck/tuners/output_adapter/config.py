from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from ...registration import peft_type
from ..base.config import AdapterConfigBase

OUTPUT_EMBEDDINGS = "<output embeddings>"  # stands for `model.get_output_embeddings()`, whatever its name


@dataclass
class OutputAdapterConfig(AdapterConfigBase):
    """A parallel adapter on the LM head (VIP5's OutputParallelAdapterLayer):
    ``logits = head(h) + s * W_up f(W_down h)``, ``W_up`` mapping the bottleneck to the vocabulary.

    The head is found with ``model.get_output_embeddings()``, so tied input/output embeddings stay tied and the
    vocabulary matrix is never part of the saved adapter. The bottleneck width is the hidden size // reduction_factor.
    """

    reduction_factor: float = field(
        default=16, metadata={"help": "Bottleneck size = hidden size // reduction_factor (unless bottleneck_size)."}
    )
    non_linearity: Optional[str] = field(
        default="gelu", metadata={"help": "Activation between the projections (see BottleneckConfig)."}
    )
    scaling: Union[float, str] = field(
        default=1.0, metadata={"help": "Factor s on the adapter's logits: a number, 'learned' or 'channel'."}
    )
    is_parallel: bool = field(default=True, metadata={"help": "Always True: the adapter reads the head's input."})

    def __post_init__(self):
        self.peft_type = peft_type("OUTPUT_ADAPTER")
        super().__post_init__()
        if not self.is_parallel:
            raise ValueError("`is_parallel` must be True for OutputAdapterConfig (it reads the head's input).")
        if self.needs_block_context or self.input_from:
            raise ValueError("`original_ln_before`, `original_ln_after=False` and `input_from` do not apply to the LM "
                             "head; leave them at their defaults.")
        if self.target_modules is not None and self.target_modules != {OUTPUT_EMBEDDINGS}:
            raise ValueError(
                "`target_modules` is not used by OutputAdapterConfig: it always adapts the model's output embeddings "
                "(`get_output_embeddings()`). Leave it unset."
            )

    def default_targets(self, positions) -> tuple[list[str], list[str]]:
        return [OUTPUT_EMBEDDINGS], []
