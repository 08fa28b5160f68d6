from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from ...registration import peft_type
from ..bottleneck.config import BottleneckConfig

PHM_C_INITS = ("normal", "uniform")


@dataclass
class CompacterConfig(BottleneckConfig):
    """Compacter (Mahabadi et al. 2021): bottleneck adapters whose projections are PHM layers,
    ``W = sum_{i=1..n} A_i (x) B_i``, with the rules ``A_i`` shared across layers and ``B_i = s_i t_i^T``.

    ``placement='houlsby'`` (default) is Compacter (AdapterHub's ``compacter``); ``placement='pfeiffer'`` is
    Compacter++ (``compacter++``: feed-forward only). Defaults follow the paper and AdapterHub: n = 4, reduction
    factor 32, gelu, shared rule, rank-1 factorised ``B_i``, rule init N(0, 1e-4).
    """

    reduction_factor: float = field(
        default=32,
        metadata={"help": "Bottleneck size = hidden size // reduction_factor (ignored when bottleneck_size is set)."},
    )
    non_linearity: Optional[str] = field(
        default="gelu", metadata={"help": "Activation between the projections (see BottleneckConfig)."}
    )
    phm_dim: int = field(
        default=4,
        metadata={"help": "n: the number of Kronecker summands; must divide the hidden and bottleneck sizes."},
    )
    shared_phm_rule: bool = field(
        default=True,
        metadata={
            "help": "Share one set of rules A_i (n x n x n) across all layers and both projections; it is saved "
            "once. False: every adapter layer keeps its own rules for its down and up projection."
        },
    )
    factorized_phm_W: bool = field(
        default=True, metadata={"help": "Write each B_i as the rank-`phm_rank` product s_i t_i^T."}
    )
    phm_rank: int = field(default=1, metadata={"help": "Rank of the factorised B_i."})
    phm_c_init: Literal["normal", "uniform"] = field(
        default="normal", metadata={"help": "Init of the rules: 'normal' N(0, r) or 'uniform' U(-r, r), r = phm_init_range."}
    )
    phm_init_range: float = field(default=1e-4, metadata={"help": "Scale r of the rule init."})
    learn_phm: bool = field(default=True, metadata={"help": "Train the rules (False keeps them at their init)."})
    phm_bias: bool = field(default=True, metadata={"help": "Give the PHM projections a bias."})
    init_weights: Union[bool, str] = field(
        default=True,
        metadata={
            "help": "True: zero up-projection (the last factor of its B_i, and its bias), so a fresh adapter is the "
            "identity. False: random both (tests)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = peft_type("COMPACTER")
        if isinstance(self.phm_dim, bool) or not isinstance(self.phm_dim, int) or self.phm_dim < 1:
            raise ValueError(f"`phm_dim` must be a positive integer, got {self.phm_dim!r}.")
        if isinstance(self.phm_rank, bool) or not isinstance(self.phm_rank, int) or self.phm_rank < 1:
            raise ValueError(f"`phm_rank` must be a positive integer, got {self.phm_rank!r}.")
        if self.phm_c_init not in PHM_C_INITS:
            raise ValueError(f"`phm_c_init` must be one of {list(PHM_C_INITS)}, got {self.phm_c_init!r}.")
        if not self.phm_init_range > 0:
            raise ValueError(f"`phm_init_range` must be positive, got {self.phm_init_range!r}.")
        if self.init_weights not in (True, False):
            raise ValueError(f"`init_weights` must be one of [True, False] for Compacter, got {self.init_weights!r}.")
