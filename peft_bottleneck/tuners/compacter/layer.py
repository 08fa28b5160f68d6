from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ...phm import PHMLinear, PHMRule, check_divisible
from ..bottleneck.layer import BottleneckLayer
from .config import CompacterConfig


class CompacterLayer(BottleneckLayer):
    """A sequential bottleneck adapter whose down- and up-projections are PHM layers.

    Rules: with ``shared_phm_rule`` one ``PHMRule`` module serves every layer. The first layer that gets it
    registers it (so it is saved, moved and cast once, with the model); the others keep an unregistered reference
    in ``compacter_shared_rule_refs``. A loader that replaces the rule's parameter replaces it on that one module, so
    every layer sees it. Without sharing, each layer registers its own (2, n, n, n) rule.
    """

    adapter_layer_names = ("compacter_down", "compacter_up", "compacter_scale", "compacter_phm_rule")
    other_param_names = ("compacter_dropout", "non_linearity", "scaling", "compacter_shared_rule_refs")
    adapter_kind = "Compacter"

    def __init__(self, *args, **kwargs) -> None:
        self.__dict__[self.other_param_names[3]] = {}  # unregistered references to a shared rule
        super().__init__(*args, **kwargs)

    @property
    def rule_store(self) -> nn.ModuleDict:
        return getattr(self, self.adapter_layer_names[3])

    @property
    def rule_refs(self) -> dict:
        return getattr(self, self.other_param_names[3])

    def create_projections(self, adapter_name: str, config: CompacterConfig,
                           shared_rule: Optional[PHMRule] = None, register_shared_rule: bool = False,
                           **kwargs) -> None:
        width = self.bottleneck_width(config)
        n = config.phm_dim
        check_divisible(n, adapter_input_size=self.adapter_in_features, hidden_size=self.out_features,
                        bottleneck_size=width)
        phm = dict(phm_dim=n, rank=config.phm_rank, factorized=config.factorized_phm_W, bias=config.phm_bias)
        self.adapter_down[adapter_name] = PHMLinear(self.adapter_in_features, width, **phm)
        self.adapter_up[adapter_name] = PHMLinear(width, self.out_features, **phm)
        if not config.shared_phm_rule:
            self.rule_store[adapter_name] = PHMRule(n, True, config.phm_c_init, config.phm_init_range)
        elif shared_rule is None:
            raise ValueError("A shared PHM rule is created by CompacterModel and passed to each layer.")
        elif register_shared_rule:
            self.rule_store[adapter_name] = shared_rule
        else:
            self.rule_refs[adapter_name] = shared_rule
        if not config.learn_phm:
            # per-instance copy: the class attribute is a shared default
            frozen = (self.adapter_layer_names[3],)
            self.frozen_peft_weight_names = {**self.frozen_peft_weight_names, adapter_name: frozen}

    @staticmethod
    def reset_projections(down: PHMLinear, up: PHMLinear, init_weights: bool | str) -> None:
        down.reset_parameters()
        up.reset_parameters(zero=init_weights is True)

    def rule(self, adapter_name: str) -> PHMRule:
        if adapter_name in self.rule_store:
            return self.rule_store[adapter_name]
        return self.rule_refs[adapter_name]

    def projection_weights(self, adapter_name: str, down: PHMLinear, up: PHMLinear) -> tuple[torch.Tensor, ...]:
        device = down.factors()[0].device
        down_rule, up_rule = (r.to(device) for r in self.rule(adapter_name).down_up())
        return down.weight(down_rule), down.bias, up.weight(up_rule), up.bias


def rehome_shared_rules(model) -> None:
    """Register every shared rule in a layer again if the layer that held it is gone (e.g. pruned away)."""
    layers = [m for m in model.modules() if isinstance(m, CompacterLayer)]
    registered = {id(rule) for layer in layers for rule in layer.rule_store.values()}
    for layer in layers:
        for name, rule in list(layer.rule_refs.items()):
            if id(rule) not in registered:
                del layer.rule_refs[name]
                layer.rule_store[name] = rule
                registered.add(id(rule))
