from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from ...registration import peft_type
from ...target_modules import colliding_names
from ..base.config import AdapterConfigBase, check_bool, check_choice

PLACEMENTS = ("houlsby", "pfeiffer")
# LLM-Adapters' module types by name: an "mh_adapter" transforms the module's input, an "output_adapter" its output
LLM_ADAPTERS_INPUT_SIDE = ("gate_proj", "up_proj", "fc1", "c_fc", "fc_in", "dense_h_to_4h")
DEFAULT_NON_LINEARITY = {"houlsby": "swish", "pfeiffer": "relu"}


@dataclass
class BottleneckConfig(AdapterConfigBase):
    """Sequential bottleneck adapter: ``h + s * W_up f(W_down h)`` on the output ``h`` of each target module.

    ``placement='houlsby'`` (default; Houlsby et al. 2019) adapts the attention output projection and the
    feed-forward output projection of every layer (swish, reduction factor 16): AdapterHub's ``double_seq_bn``.
    ``placement='pfeiffer'`` (Pfeiffer et al. 2021) adapts only the feed-forward output and, like AdapterHub's
    ``seq_bn``, reads the block's output after its residual and LayerNorm (``original_ln_before=True``: the adapter
    computes ``LN(h + s * A(LN(h + x)) + x)``); relu, reduction factor 16. The one difference from the presets by
    default is the initialisation (``init_weights=True``: identity at the start; ``init_weights="bert"`` is theirs).
    Note: the Compacter paper's code places its "Pfeiffer" adapter after self-attention instead; we follow
    AdapterHub.
    """

    placement: Literal["houlsby", "pfeiffer"] = field(
        default="houlsby",
        metadata={
            "help": "Where adapters go when target_modules is not set: 'houlsby' = after the attention output "
            "projection and after the feed-forward output in every layer; 'pfeiffer' = after the feed-forward "
            "output only (as in AdapterHub)."
        },
    )

    use_parallel_adapter: Optional[bool] = field(
        default=None,
        metadata={"help": "LLM-Adapters' field (set in their adapter_config.json): parallel adapters. When it or "
                  "use_adapterp is given, the config follows LLM-Adapters: no projection biases, and adapters on "
                  "input-side modules (gate_proj, up_proj, fc1, ...) transform the module's input."},
    )
    use_adapterp: Optional[bool] = field(
        default=None, metadata={"help": "LLM-Adapters' field: AdapterP (their output-side placement); see above."}
    )

    def __post_init__(self):
        self.peft_type = self.own_peft_type()
        for name in ("use_parallel_adapter", "use_adapterp"):
            if getattr(self, name) is not None:
                check_bool(self, name)
        if self.use_parallel_adapter is not None or self.use_adapterp is not None:
            if type(self) is not BottleneckConfig:
                raise ValueError("`use_parallel_adapter` / `use_adapterp` are LLM-Adapters' fields for "
                                 "BottleneckConfig only; leave them unset here.")
            self._follow_llm_adapters()
        check_choice(self, "placement", PLACEMENTS)
        super().__post_init__()

    def default_non_linearity(self) -> str:
        if type(self).__dataclass_fields__["non_linearity"].default is None:
            return DEFAULT_NON_LINEARITY[self.placement]
        return super().default_non_linearity()

    def _follow_llm_adapters(self) -> None:
        """LLM-Adapters' semantics, from their config fields (their ``target_modules`` may map names to types)."""
        targets = self.target_modules
        if isinstance(targets, dict):
            self.input_modules = sorted(n for n, kind in targets.items() if kind == "mh_adapter")
            self.target_modules = sorted(targets)
        elif targets is not None and not isinstance(targets, str):
            self.input_modules = sorted(n for n in targets if n.split(".")[-1] in LLM_ADAPTERS_INPUT_SIDE)
        self.is_parallel = bool(self.use_parallel_adapter)
        if self.is_parallel:
            self.input_modules = None
        self.adapter_biases = False
        self.original_ln_before = False

    def preset_original_ln_before(self) -> bool:
        return self.placement == "pfeiffer"  # AdapterHub's seq_bn / compacter++

    @staticmethod
    def own_peft_type():
        return peft_type("BOTTLENECK")

    def default_targets(self, positions) -> tuple[list[str], list[str]]:
        if self.placement == "houlsby":
            return list(positions.attention_output + positions.ffn_output), []
        return list(positions.ffn_output), colliding_names(positions.attention_output, positions.ffn_output)
