from __future__ import annotations

import torch
from torch import nn

from ...phm import init_rule
from ..bottleneck.model import BottleneckModel
from .config import CompacterConfig
from .layer import CompacterLayer

RULE = "compacter_phm_rule"


class CompacterModel(BottleneckModel):
    """Adds Compacter / Compacter++ adapters (PHM bottlenecks) at the Houlsby or Pfeiffer positions.

    A shared rule is one Parameter registered in every layer (so the layers also work when transformers injects
    them without this class holding state); the saved file keeps it once and loading fans it back out.
    """

    prefix: str = "compacter_"
    tuner_layer_cls = CompacterLayer

    def layer_kwargs(self, peft_config: CompacterConfig, adapter_name: str, current_key: str) -> dict:
        if not peft_config.shared_phm_rule:
            return {}
        return {"shared_rule": self._shared_rule(peft_config, adapter_name)}

    def _shared_rule(self, config: CompacterConfig, adapter_name: str) -> nn.Parameter:
        rules = self.__dict__.setdefault("_shared_rules", {})  # a plain dict: not registered on the tuner
        if adapter_name not in rules:
            device = next(self.model.parameters()).device
            rule = nn.Parameter(torch.empty(config.phm_dim, config.phm_dim, config.phm_dim, device=device))
            init_rule(rule, config.phm_c_init, config.phm_init_range)
            rules[adapter_name] = rule
        return rules[adapter_name]

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self.__dict__.get("_shared_rules", {}).pop(adapter_name, None)

    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        selected = super()._get_adapter_state_dict(model, config, adapter_name, state_dict, unwanted_adapter_names)
        if config.shared_phm_rule:
            aliases = [key for key in selected if f".{RULE}." in key or key.rpartition(".")[0].endswith(RULE)]
            for key in aliases[1:]:  # the same tensor under every layer: keep the first
                del selected[key]
        return selected

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        if config.shared_phm_rule:
            aliases = [key for key in model.state_dict() if key.endswith(f"{RULE}.{adapter_name}")]
            stored = [key for key in aliases if key in remapped]
            if len(stored) == 1:
                for key in aliases:
                    remapped.setdefault(key, remapped[stored[0]])
        return remapped
