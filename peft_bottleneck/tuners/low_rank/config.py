from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Union

from ...registration import peft_type
from ..base.config import check_number
from ..bottleneck.config import BottleneckConfig


@dataclass
class LowRankConfig(BottleneckConfig):
    """Low-rank adapters (the Compacter paper's baseline): a bottleneck adapter whose down- and up-projection are
    each a rank-``rank`` product, ``W_down = A_d B_d`` (width x r)(r x in) and ``W_up = A_u B_u``. Placement and wiring
    as ``BottleneckConfig`` (Houlsby by default)."""

    rank: int = field(default=1, metadata={"help": "r: the rank of each projection (>= 1, at most its sizes)."})
    init_weights: Union[bool, str] = field(
        default=True,
        metadata={"help": "True: the up-projection's left factor zero, so a fresh adapter is the identity. False: "
                  "random, clearly non-identity (tests)."},
    )
    init_weights_choices: ClassVar[tuple] = (True, False)

    def __post_init__(self):
        super().__post_init__()
        check_number(self, "rank", 1, 4096, integer=True)

    def own_peft_type(self):
        return peft_type("LOW_RANK_ADAPTER")
