from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from ...registration import peft_type
from ..bottleneck.config import AdapterConfigBase

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
        default=1.0, metadata={"help": "Factor s on the adapter's logits: a number, or 'learned' (init 1)."}
    )

    def __post_init__(self):
        self.peft_type = peft_type("OUTPUT_ADAPTER")
        super().__post_init__()
        if self.target_modules is not None and self.target_modules != {OUTPUT_EMBEDDINGS}:
            raise ValueError(
                "`target_modules` is not used by OutputAdapterConfig: it always adapts the model's output embeddings "
                "(`get_output_embeddings()`). Leave it unset."
            )
