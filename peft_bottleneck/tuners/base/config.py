"""The fields every tuner type of this package shares, declared once.

``TargetingConfig`` says where adapters go (PEFT's targeting fields plus the layer map); ``AdapterConfigBase`` adds
what one bottleneck adapter computes: its size, non-linearity, scaling, initialisation and the AdapterHub fields that
change the forward (layer norms and residuals around the adapter, gating). Every tuner config derives from one of
the two; the controller's config only from the first.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional, Union

from peft.config import PeftConfig

from ...activations import ALLOWED_NON_LINEARITIES, check_non_linearity

# 1: files written by peft-bottleneck 0.1.0 (no `format_version` field); 2: this version
FORMAT_VERSION = 2
INIT_WEIGHTS_CHOICES = (True, False, "bert", "houlsby", "mam_adapter")
BIAS_CHOICES = ("none", "all", "bottleneck_only")
SCALING_MODES = ("learned", "channel")
RESIDUAL_BEFORE_LN_CHOICES = (True, False, "post_add")


def check_bool(config, name: str) -> None:
    value = getattr(config, name)
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False, got {value!r} ({type(value).__name__}).")


def check_number(config, name: str, low: float = -math.inf, high: float = math.inf, *, integer: bool = False,
                 low_open: bool = False, high_open: bool = False, optional: bool = False) -> None:
    """A real, finite number in the range; numpy scalars become plain Python numbers so the config serialises."""
    value = getattr(config, name)
    if value is None and optional:
        return
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"`{name}` must be {'an integer' if integer else 'a number'}, got {value!r} "
                        f"({type(value).__name__}).")
    value = int(value) if integer else float(value) if not isinstance(value, int) else value
    setattr(config, name, value)
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if not math.isfinite(value) or too_low or too_high:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"`{name}` must be a finite number in {interval}, got {value!r}.")


def check_choice(config, name: str, choices) -> None:
    value = getattr(config, name)
    # `True == 1` in Python: compare types too, so 1 is not taken for True
    if not any(value == c and type(value) is type(c) for c in choices):
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}.")


def _check_pattern(name: str, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as error:
        raise ValueError(f"`{name}` holds {pattern!r}, which is not a valid regular expression ({error}).") from None


def check_name_list(config, name: str, allow_regex: bool = True) -> None:
    """A list / set of module names, or (where PEFT allows it) one regex string."""
    value = getattr(config, name)
    if value is None:
        return
    if allow_regex and isinstance(value, str):
        _check_pattern(name, value)
        return
    if isinstance(value, (list, tuple, set)) and all(isinstance(v, str) and v.strip() for v in value):
        for entry in value:
            _check_pattern(name, entry)  # PEFT builds regexes from the entries of some of these lists
        setattr(config, name, set(value))
        return
    raise TypeError(f"`{name}` must be a list of (non-empty) module names"
                    f"{' or one regex string' if allow_regex else ''}, got {value!r}.")


@dataclass
class TargetingConfig(PeftConfig):
    """Where adapters go: PEFT's targeting fields, AdapterHub's ``leave_out`` and the pruned-layer map."""

    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={
            "help": "Names of the modules to adapt: a list of exact names or name suffixes (e.g. ['o_proj', "
            "'down_proj']) or one regex matched against the full name. If not set, the positions of the "
            "configured placement come from the architecture table (by `model_type`) or, for any other model, are "
            "found from the model itself (its repeated blocks, read off one forward on a dummy input)."
        },
    )
    towers: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={
            "help": "With default positions, which towers of a multi-tower model get adapters: 'text', 'vision', "
            "'audio' (or a list of them) or 'all'. Default: every tower of an encoder-decoder (T5, BART, Whisper) "
            "and of a single-modality model; only the language model's blocks of a model that also holds a vision "
            "or audio tower (LLaVA, CLIP, SigLIP)."
        },
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Names (list of names/suffixes, or one regex) of modules never to adapt."}
    )
    layers_to_transform: Optional[Union[list[int], int]] = field(
        default=None,
        metadata={"help": "Adapt only the layers with these indices (works with the list form of `target_modules`)."},
    )
    layers_pattern: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={
            "help": "Name of the layer list used with `layers_to_transform` when it is not the first numbered "
            "module in a name, e.g. 'layers' or 'h'."
        },
    )
    leave_out: Optional[list[int]] = field(
        default=None,
        metadata={"help": "Layer indices (from 0) to leave without adapters (AdapterHub's `leave_out`)."},
    )
    modules_to_save: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Modules besides the adapters to train and save, e.g. a freshly initialised classifier. For "
            "task_type='SEQ_CLS' PEFT adds 'classifier' and 'score' itself."
        },
    )
    layer_map: Optional[dict] = field(
        default=None,
        metadata={
            "help": "Set automatically: which original layers of each layer stack the model had when the adapter "
            "was made ({} if unpruned). Loading refuses a base model pruned differently."
        },
    )
    composition: Optional[dict] = field(
        default=None,
        metadata={"help": "Set by compose(): the composition block active when the adapters were saved "
                  "(restored by load_composed)."},
    )
    format_version: Optional[int] = field(
        default=None,
        metadata={
            "help": f"Set automatically: the saved format ({FORMAT_VERSION} today). Files without it were written by "
            "peft-bottleneck 0.1.0 and are loaded with that version's computation."
        },
    )

    def __post_init__(self):
        # a config read from a file carries `peft_version`; one built in code does not, yet
        loaded = self.peft_version is not None
        self._loaded = loaded  # not a field: never saved
        super().__post_init__()
        if self.format_version is None:
            self.format_version = 1 if loaded else FORMAT_VERSION
        check_choice(self, "format_version", (1, FORMAT_VERSION))
        check_name_list(self, "target_modules")
        check_name_list(self, "exclude_modules")
        self._check_towers()
        check_name_list(self, "modules_to_save", allow_regex=False)
        if isinstance(self.modules_to_save, set):
            self.modules_to_save = sorted(self.modules_to_save)
        self._check_layer_indices("layers_to_transform", allow_int=True)
        self._check_layer_indices("leave_out", allow_int=False)
        if self.layers_pattern is not None and not (
            isinstance(self.layers_pattern, str)
            or (isinstance(self.layers_pattern, (list, tuple)) and all(isinstance(p, str) for p in self.layers_pattern))
        ):
            raise TypeError(f"`layers_pattern` must be a name or a list of names, got {self.layers_pattern!r}.")
        if self.layers_pattern and self.layers_to_transform is None and not self.leave_out:
            raise ValueError("`layers_pattern` only takes effect together with `layers_to_transform` or `leave_out`.")
        if self.leave_out and self.layers_to_transform is not None:
            raise ValueError("Pass either `layers_to_transform` or `leave_out`, not both.")
        check_bool(self, "inference_mode")
        if self.composition is not None:
            from .blocks import from_dict

            try:
                from_dict(self.composition)
            except (ValueError, TypeError, KeyError) as error:
                raise ValueError(f"`composition` is not a composition block: {error}") from None
        if self.layer_map is not None and self.layer_map != "unchecked" and not (
            isinstance(self.layer_map, dict)
            and all(isinstance(k, str) and isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool)
                                                                       for i in v) for k, v in self.layer_map.items())
        ):
            raise TypeError(f"`layer_map` must map layer-stack paths to lists of layer indices (or be 'unchecked'), got "
                            f"{self.layer_map!r}.")

    def _check_towers(self) -> None:
        from ...discovery import TOWER_CHOICES

        value = self.towers
        if value is None:
            return
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, (list, tuple)) or not values or any(v not in TOWER_CHOICES for v in values):
            raise ValueError(f"`towers` must be one of {list(TOWER_CHOICES)} or a list of them, got {value!r}.")
        self.towers = value if isinstance(value, str) else list(dict.fromkeys(values))

    def _check_layer_indices(self, name: str, allow_int: bool) -> None:
        """A list of layer indices >= 0 (a single index becomes a one-item list)."""
        value = getattr(self, name)
        if value is None:
            return
        if allow_int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
            value = [value]
        if not (isinstance(value, (list, tuple)) and all(
                isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in value)):
            raise TypeError(f"`{name}` must be {'an integer or ' if allow_int else ''}a list of layer indices, "
                            f"got {getattr(self, name)!r}.")
        if any(i < 0 for i in value):
            raise ValueError(f"`{name}` must hold layer indices >= 0, got {list(value)!r}.")
        setattr(self, name, [int(i) for i in value])


@dataclass
class AdapterConfigBase(TargetingConfig):
    """What one bottleneck adapter computes: ``h + s * W_up f(W_down h)`` and AdapterHub's variations of it.

    The layer-norm and residual fields follow AdapterHub's ``BnConfig`` exactly (same names, same meaning); the
    defaults are those of the tuner type's published preset.
    """

    bias: Literal["none", "all", "bottleneck_only"] = field(
        default="none",
        metadata={
            "help": "Which biases of the base model to train as well: 'none', 'all', or 'bottleneck_only' (the "
            "biases of the adapted modules)."
        },
    )
    reduction_factor: Union[float, dict] = field(
        default=16,
        metadata={"help": "Bottleneck size = hidden size // reduction_factor (ignored when bottleneck_size is set); "
                  "at least 1/64. Or one per layer, AdapterHub's mapping: {'0': 8, 'default': 16} (layer indices "
                  "count an encoder-decoder's encoder layers first, then its decoder layers)."},
    )
    bottleneck_size: Optional[int] = field(
        default=None, metadata={"help": "Explicit bottleneck width; overrides reduction_factor."}
    )
    non_linearity: Optional[str] = field(
        default=None,
        metadata={
            "help": f"Activation between the projections, one of {list(ALLOWED_NON_LINEARITIES)}. Default: the "
            "published configuration of the chosen placement."
        },
    )
    adapter_dropout: float = field(
        default=0.0,
        metadata={"help": "Dropout on the adapter's scaled output (where AdapterHub applies it), in [0, 1)."},
    )
    scaling: Union[float, str] = field(
        default=1.0,
        metadata={
            "help": "Factor s on the adapter output: a number, 'learned' (a trained scalar, init 1) or 'channel' "
            "(a trained vector over the output features, init 1)."
        },
    )
    init_weights: Union[bool, str] = field(
        default=True,
        metadata={
            "help": "True (= AdapterHub's 'mam_adapter'): Kaiming-uniform down-projection and zero up-projection, "
            "so a fresh adapter is the identity. 'bert': both N(0, 0.02), AdapterHub's default for seq_bn and "
            "double_seq_bn. 'houlsby': both truncated N(0, 0.01). False: random both, clearly non-identity (tests)."
        },
    )
    use_gating: bool = field(
        default=False,
        metadata={"help": "A trained gate sigmoid(W_g x) (mean over the sequence) multiplies the adapter output."},
    )
    original_ln_before: Optional[bool] = field(
        default=None,
        metadata={
            "help": "Apply the block's residual (and its LayerNorm, in post-LN models) before the adapter, so the "
            "adapter reads LN(h + x). Default (None): the placement's preset, set when the adapter is attached: True "
            "for 'pfeiffer' at its default positions, as AdapterHub's seq_bn; False otherwise (with explicit "
            "target_modules, pass True yourself)."
        },
    )
    original_ln_after: bool = field(
        default=True,
        metadata={
            "help": "Apply the block's residual (and LayerNorm) after the adapter, as the model does anyway. False: "
            "the block returns the adapter's output without them."
        },
    )
    residual_before_ln: Union[bool, str] = field(
        default=True,
        metadata={
            "help": "Where the residual around the adapter is taken: True = the module output before the block's "
            "residual/LayerNorm, False = the adapter's input, 'post_add' = after the residual add, before the "
            "LayerNorm (only with original_ln_before)."
        },
    )
    ln_before: bool = field(default=False, metadata={"help": "A new trained LayerNorm on the adapter's input."})
    ln_after: bool = field(default=False, metadata={"help": "A new trained LayerNorm on the adapter's output."})
    adapter_residual_before_ln: bool = field(
        default=False,
        metadata={"help": "With ln_after: add the adapter's residual before that LayerNorm instead of after."},
    )
    is_parallel: bool = field(
        default=False,
        metadata={"help": "Parallel adapter: read the block's input and add to the module's output."},
    )
    adapter_biases: bool = field(
        default=True,
        metadata={"help": "Give the down- and up-projection a bias (LLM-Adapters' adapters have none)."},
    )
    fusion_of: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Set by add_fusion(): this entry is an AdapterFusion layer over these adapters, not an "
                  "adapter itself."},
    )
    input_modules: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Targets (names or suffixes) whose adapter transforms the module's input instead of its output: "
            "module(x + s * A(x)), as LLM-Adapters does on gate_proj / up_proj. Sequential adapters with the "
            "default wiring only."
        },
    )
    inv_adapter: Optional[str] = field(
        default=None,
        metadata={
            "help": "An invertible adapter (MAD-X) on the embedding output, its inverse before the output embeddings: "
            "'nice' or 'glow' coupling (AdapterHub's `inv_adapter`), or None."
        },
    )
    inv_adapter_reduction_factor: Optional[float] = field(
        default=None,
        metadata={"help": "Reduction factor inside the invertible adapter's subnets (AdapterHub's presets: 2); "
                  "required with inv_adapter."},
    )
    input_from: Optional[dict[str, str]] = field(
        default=None,
        metadata={
            "help": "Parallel adapters: maps a target name (suffix) to the module whose input the adapter reads, "
            "given as the suffix that replaces it, e.g. {'output.dense': 'intermediate'} for BERT. Targets not "
            "listed read their own input. Filled from the architecture when target_modules is not set."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        # below 1/64 the bottleneck would be wider than 64x the hidden size: a typo, not an adapter
        self._check_reduction_factor()
        check_number(self, "bottleneck_size", 1, integer=True, optional=True)
        if self.non_linearity is None:
            self.non_linearity = self.default_non_linearity()
        self.non_linearity = check_non_linearity(self.non_linearity)
        check_number(self, "adapter_dropout", 0.0, 1.0, high_open=True)
        if isinstance(self.scaling, str):
            check_choice(self, "scaling", SCALING_MODES)
        else:
            check_number(self, "scaling", -1e4, 1e4)  # beyond this the adapter's output overflows float16/32
        check_choice(self, "init_weights", self.init_weights_choices)
        check_choice(self, "bias", BIAS_CHOICES)
        for name in ("use_gating", "original_ln_after", "ln_before", "ln_after", "adapter_residual_before_ln",
                     "is_parallel", "adapter_biases"):
            check_bool(self, name)
        if self.original_ln_before is None and self.format_version == 1:
            self.original_ln_before = False  # 0.1.0 computed every placement without it
        if self.original_ln_before is not None:
            check_bool(self, "original_ln_before")
        check_choice(self, "residual_before_ln", RESIDUAL_BEFORE_LN_CHOICES)
        if self.residual_before_ln == "post_add" and not self.original_ln_before:
            raise ValueError("`residual_before_ln='post_add'` needs `original_ln_before=True` (it is the residual "
                             "taken after the block's residual add).")
        if self.is_parallel and self.original_ln_before:
            raise ValueError("`original_ln_before=True` applies to sequential adapters only (is_parallel=False).")
        check_name_list(self, "input_modules", allow_regex=False)
        if self.inv_adapter is not None:
            check_choice(self, "inv_adapter", INV_ADAPTER_CHOICES)
            if self.inv_adapter_reduction_factor is None:
                raise ValueError("`inv_adapter_reduction_factor` is required with `inv_adapter` (AdapterHub's presets "
                                 "use 2).")
            check_number(self, "inv_adapter_reduction_factor", 1 / 64)
        elif self.inv_adapter_reduction_factor is not None:
            check_number(self, "inv_adapter_reduction_factor", 1 / 64)
        if self.fusion_of is not None and not (isinstance(self.fusion_of, (list, tuple)) and len(self.fusion_of) > 1
                                               and all(isinstance(n, str) and n for n in self.fusion_of)):
            raise TypeError(f"`fusion_of` must list at least two adapter names, got {self.fusion_of!r}.")
        if self.fusion_of is not None:
            self.fusion_of = list(self.fusion_of)
            if len(set(self.fusion_of)) != len(self.fusion_of):
                raise ValueError(f"`fusion_of` names an adapter twice: {self.fusion_of!r}; list each once.")
        if self.input_modules and (self.is_parallel or self.needs_block_context or self.ln_before or self.ln_after
                                   or self.use_gating or self.residual_before_ln is not True):
            raise ValueError("`input_modules` takes sequential adapters with the default wiring only (no "
                             "is_parallel, original_ln_*, ln_before/after, use_gating or residual_before_ln changes).")
        if self.input_from is not None and not (
            isinstance(self.input_from, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in self.input_from.items())
        ):
            raise TypeError(f"`input_from` must map target names to module names (dict[str, str]), got "
                            f"{self.input_from!r}.")

    def _check_reduction_factor(self) -> None:
        if not isinstance(self.reduction_factor, dict):
            check_number(self, "reduction_factor", 1 / 64)  # below: a width over 64x the hidden size, a typo
            return
        factors = {}
        for key, value in self.reduction_factor.items():
            name = str(key)
            if name != "default" and not (name.isdigit() and not isinstance(key, bool)):
                raise ValueError(f"`reduction_factor` as a mapping takes layer indices (0, 1, ... or '0', '1', ...) "
                                 f"and 'default' as keys, got {key!r}.")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
                    value < 1 / 64:
                raise ValueError(f"`reduction_factor[{name!r}]` must be a finite number >= 1/64, got {value!r}.")
            factors[name] = float(value) if not isinstance(value, int) else value
        if not factors:
            raise ValueError("`reduction_factor` as a mapping must name at least 'default' or one layer.")
        self.reduction_factor = factors

    def default_non_linearity(self) -> str:
        """The non-linearity when none is given: the field's declared default (the type's published preset)."""
        default = type(self).__dataclass_fields__["non_linearity"].default
        return default if isinstance(default, str) else "relu"

    def preset_original_ln_before(self) -> bool:
        """Whether the placement's published preset sets ``original_ln_before`` (applied at the default positions)."""
        return False

    def bottleneck_width(self, hidden_size: int, layer_index: Optional[int] = None) -> int:
        if self.bottleneck_size is not None:
            return self.bottleneck_size
        factor = self.reduction_factor
        if isinstance(factor, dict):
            key = str(layer_index) if str(layer_index) in factor else "default"
            if key not in factor:
                raise ValueError(f"`reduction_factor` {factor} names neither layer {layer_index} nor 'default'; add "
                                 "'default' (AdapterHub's rule).")
            factor = factor[key]
        return max(1, int(hidden_size // factor))

    init_weights_choices: ClassVar[tuple] = INIT_WEIGHTS_CHOICES

    # what the layers read off a config
    @property
    def needs_block_context(self) -> bool:
        """Whether the adapter needs the block's residual input / LayerNorm (AdapterHub's non-default settings)."""
        return bool(self.original_ln_before) or not self.original_ln_after

    def structure(self) -> tuple:
        """The fields that change the shape of the computation; adapters routed together must agree on them."""
        return (bool(self.original_ln_before), self.original_ln_after, self.residual_before_ln, self.ln_before,
                self.ln_after, self.adapter_residual_before_ln, self.is_parallel, self.use_gating)

    def default_targets(self, positions) -> tuple[list[str], list[str]]:
        """(targets, names to exclude) at this config's placement; see ``target_modules.AdapterPositions``."""
        raise NotImplementedError


INV_ADAPTER_CHOICES = ("nice", "glow")
STRUCTURE_FIELDS = ("original_ln_before", "original_ln_after", "residual_before_ln", "ln_before", "ln_after",
                    "adapter_residual_before_ln", "is_parallel", "use_gating")
