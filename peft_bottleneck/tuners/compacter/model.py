from __future__ import annotations

from ...phm import PHMRule
from ..bottleneck.model import BottleneckModel
from .config import CompacterConfig
from .layer import CompacterLayer


def shared_rule_kwargs(tuner, config: CompacterConfig, adapter_name: str) -> dict:
    """The shared rule for ``adapter_name`` (created on first use) and whether this layer is the one to register it."""
    if not config.shared_phm_rule:
        return {}
    rules = tuner.__dict__.setdefault("_shared_rules", {})  # a plain dict: not registered on the tuner
    is_new = adapter_name not in rules
    if is_new:
        device = next(tuner.model.parameters()).device
        rules[adapter_name] = PHMRule(config.phm_dim, False, config.phm_c_init, config.phm_init_range, device=device)
    return {"shared_rule": rules[adapter_name], "register_shared_rule": is_new}


class CompacterModel(BottleneckModel):
    """Adds Compacter / Compacter++ adapters (PHM bottlenecks) at the Houlsby or Pfeiffer positions.

    The shared rule lives in the adapted layers, not on this class, so transformers' ``load_adapter`` (which injects
    layers without keeping the tuner) works too; it is registered, and so saved, exactly once.
    """

    prefix: str = "compacter_"
    tuner_layer_cls = CompacterLayer

    def layer_kwargs(self, peft_config: CompacterConfig, adapter_name: str, current_key: str) -> dict:
        return shared_rule_kwargs(self, peft_config, adapter_name)

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self.__dict__.get("_shared_rules", {}).pop(adapter_name, None)
