from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ...phm import PHMLinear, check_divisible, init_rule
from ..bottleneck.layer import BottleneckLayer
from .config import CompacterConfig


class CompacterLayer(BottleneckLayer):
    """A sequential bottleneck adapter whose down- and up-projections are PHM layers.

    ``compacter_phm_rule[name]`` holds the rules: one (n, n, n) tensor that is the *same* Parameter in every layer
    when shared (the model saves it once), or a (2, n, n, n) tensor (down, up) of this layer's own.
    """

    adapter_layer_names = ("compacter_down", "compacter_up", "compacter_scale", "compacter_phm_rule")
    other_param_names = ("compacter_dropout", "non_linearity", "scaling")
    adapter_kind = "Compacter"

    @property
    def phm_rules(self) -> nn.ParameterDict:
        return self.compacter_phm_rule

    def create_projections(self, adapter_name: str, config: CompacterConfig,
                           shared_rule: Optional[nn.Parameter] = None, **kwargs) -> None:
        width = config.bottleneck_width(self.out_features)
        n = config.phm_dim
        check_divisible(n, adapter_input_size=self.adapter_in_features, hidden_size=self.out_features,
                        bottleneck_size=width)
        phm = dict(phm_dim=n, rank=config.phm_rank, factorized=config.factorized_phm_W, bias=config.phm_bias)
        self.adapter_down[adapter_name] = PHMLinear(self.adapter_in_features, width, **phm)
        self.adapter_up[adapter_name] = PHMLinear(width, self.out_features, **phm)
        if config.shared_phm_rule:
            if shared_rule is None:
                raise ValueError("A shared PHM rule must be created by the CompacterModel and passed to the layer.")
            self.phm_rules[adapter_name] = shared_rule
        else:
            rule = nn.Parameter(torch.empty(2, n, n, n))
            init_rule(rule, config.phm_c_init, config.phm_init_range)
            self.phm_rules[adapter_name] = rule
        if not config.learn_phm:
            # per-instance copy: the class attribute is a shared default
            self.frozen_peft_weight_names = {**self.frozen_peft_weight_names, adapter_name: ("compacter_phm_rule",)}

    def reset_adapter_parameters(self, adapter_name: str, init_weights: bool | str) -> None:
        self.adapter_down[adapter_name].reset_parameters()
        self.adapter_up[adapter_name].reset_parameters(zero=init_weights is True)

    def rules(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        rule = self.phm_rules[adapter_name]
        return (rule[0], rule[1]) if rule.dim() == 4 else (rule, rule)

    def adapter_weights(self, adapter_name: str) -> tuple[torch.Tensor, ...]:
        down, up = self.adapter_down[adapter_name], self.adapter_up[adapter_name]
        down_rule, up_rule = self.rules(adapter_name)
        device = down.factors()[0].device
        return down.weight(down_rule.to(device)), down.bias, up.weight(up_rule.to(device)), up.bias

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device=None) -> None:
        # the shared rule is one Parameter in every layer: moving it here would replace it by a per-layer copy
        shared = None
        if adapter_name in self.phm_rules and self.phm_rules[adapter_name].dim() == 3:
            shared = self.phm_rules.pop(adapter_name)
        super()._move_adapter_to_device_of_base_layer(adapter_name, device=device)
        if shared is not None:
            self.phm_rules[adapter_name] = shared
