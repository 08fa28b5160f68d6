from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from peft.config import PeftConfig

from ...activations import ALLOWED_NON_LINEARITIES, check_non_linearity
from ...registration import peft_type

INIT_WEIGHTS_CHOICES = (True, False, "bert", "houlsby")
BIAS_CHOICES = ("none", "all", "bottleneck_only")


@dataclass
class AdapterConfigBase(PeftConfig):
    """Fields shared by every bottleneck-style adapter (sequential, parallel; PHM builds on it too)."""

    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={
            "help": "Names of the modules to adapt: a list of exact names or name suffixes (e.g. ['o_proj', "
            "'down_proj']) or one regex matched against the full name. If not set, the positions of the "
            "configured placement are looked up by the model's `model_type`; unknown architectures must pass it."
        },
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={"help": "Names (list of names/suffixes, or one regex) of modules never to adapt."},
    )
    layers_to_transform: Optional[Union[list[int], int]] = field(
        default=None,
        metadata={
            "help": "Adapt only the layers with these indices (works with the list form of `target_modules`)."
        },
    )
    layers_pattern: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={
            "help": "Name of the layer list used with `layers_to_transform` when it is not the first numbered "
            "module in a name, e.g. 'layers' or 'h'."
        },
    )
    modules_to_save: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Modules besides the adapters to train and save, e.g. a freshly initialised classifier. For "
            "task_type='SEQ_CLS' PEFT adds 'classifier' and 'score' itself."
        },
    )
    bias: Literal["none", "all", "bottleneck_only"] = field(
        default="none",
        metadata={
            "help": "Which biases of the base model to train as well: 'none', 'all', or 'bottleneck_only' (the "
            "biases of the adapted modules)."
        },
    )
    reduction_factor: float = field(
        default=16,
        metadata={"help": "Bottleneck size = hidden size // reduction_factor (ignored when bottleneck_size is set)."},
    )
    bottleneck_size: Optional[int] = field(
        default=None,
        metadata={"help": "Explicit bottleneck width; overrides reduction_factor."},
    )
    non_linearity: Optional[str] = field(
        default=None,
        metadata={
            "help": f"Activation between the projections, one of {list(ALLOWED_NON_LINEARITIES)}. Default: the "
            "published configuration of the chosen placement."
        },
    )
    adapter_dropout: float = field(
        default=0.0, metadata={"help": "Dropout on the adapter input, in [0, 1)."}
    )
    scaling: Union[float, str] = field(
        default=1.0,
        metadata={"help": "Factor s on the adapter output: a number, or 'learned' for a trained scalar (init 1)."},
    )
    layer_map: Optional[dict] = field(
        default=None,
        metadata={
            "help": "Set automatically: which original layers of each layer stack the model had when the adapter "
            "was made ({} if unpruned). Loading refuses a base model pruned differently."
        },
    )
    init_weights: Union[bool, str] = field(
        default=True,
        metadata={
            "help": "True: Kaiming-uniform down-projection and zero up-projection, so a fresh adapter is the "
            "identity. 'bert': both N(0, 0.02). 'houlsby': both truncated N(0, 0.01). False: random both (tests)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)
        if self.reduction_factor is None or not self.reduction_factor > 0:
            raise ValueError(f"`reduction_factor` must be a positive number, got {self.reduction_factor!r}.")
        if self.bottleneck_size is not None and (
            isinstance(self.bottleneck_size, bool) or not isinstance(self.bottleneck_size, int) or self.bottleneck_size < 1
        ):
            raise ValueError(f"`bottleneck_size` must be a positive integer or None, got {self.bottleneck_size!r}.")
        if self.non_linearity is not None:
            self.non_linearity = check_non_linearity(self.non_linearity)
        if not 0.0 <= self.adapter_dropout < 1.0:
            raise ValueError(f"`adapter_dropout` must be in [0, 1), got {self.adapter_dropout!r}.")
        if isinstance(self.scaling, bool) or not (isinstance(self.scaling, (int, float)) or self.scaling == "learned"):
            raise ValueError(f"`scaling` must be a number or 'learned', got {self.scaling!r}.")
        if self.init_weights not in INIT_WEIGHTS_CHOICES or (
            isinstance(self.init_weights, (int, float)) and not isinstance(self.init_weights, bool)
        ):
            raise ValueError(f"`init_weights` must be one of {list(INIT_WEIGHTS_CHOICES)}, got {self.init_weights!r}.")
        if self.bias not in BIAS_CHOICES:
            raise ValueError(f"`bias` must be one of {list(BIAS_CHOICES)}, got {self.bias!r}.")
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError("`layers_pattern` only takes effect together with `layers_to_transform`.")

    def bottleneck_width(self, hidden_size: int) -> int:
        if self.bottleneck_size is not None:
            return self.bottleneck_size
        return max(1, int(hidden_size // self.reduction_factor))


PLACEMENTS = ("houlsby", "pfeiffer")
DEFAULT_NON_LINEARITY = {"houlsby": "swish", "pfeiffer": "relu"}


@dataclass
class BottleneckConfig(AdapterConfigBase):
    """Sequential bottleneck adapter: ``h + s * W_up f(W_down h)`` on the output ``h`` of each target module.

    ``placement='houlsby'`` (default; Houlsby et al. 2019) adapts the attention output projection and the
    feed-forward output projection of every layer (swish, reduction factor 16, like AdapterHub's
    ``double_seq_bn``). ``placement='pfeiffer'`` (Pfeiffer et al. 2021) adapts only the feed-forward output, as in
    AdapterHub's ``seq_bn`` (relu, reduction factor 16). Note: the Compacter paper's code places its "Pfeiffer"
    adapter after self-attention instead; we follow AdapterHub.
    """

    placement: Literal["houlsby", "pfeiffer"] = field(
        default="houlsby",
        metadata={
            "help": "Where adapters go when target_modules is not set: 'houlsby' = after the attention output "
            "projection and after the feed-forward output in every layer; 'pfeiffer' = after the feed-forward "
            "output only (as in AdapterHub)."
        },
    )

    def __post_init__(self):
        self.peft_type = peft_type("BOTTLENECK")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"`placement` must be one of {list(PLACEMENTS)}, got {self.placement!r}.")
        if self.non_linearity is None:
            self.non_linearity = DEFAULT_NON_LINEARITY[self.placement]
        super().__post_init__()
