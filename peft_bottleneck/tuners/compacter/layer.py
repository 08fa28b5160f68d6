from __future__ import annotations

import math

import torch
from torch import nn

from ...phm import check_divisible, init_rule
from ..base.kinds import AdapterKind, Projections, Sizes
from ..base.layer import AdapterLayer
from .config import CompacterConfig


class PHMKind(AdapterKind):
    """PHM projections, ``W = sum_i A_i (x) B_i`` per route: factors ``down_s`` (R, n, in/n, k) and ``down_t``
    (R, n, k, width/n) (or ``down_w`` (R, n, in/n, width/n) unfactorised), the same for ``up``, optional biases, and
    the rules ``phm_rule``: (n, n, n) shared by every layer (a shared tensor), or (2, n, n, n) per layer for the down
    and up projection; ``phm_rule_left`` / ``phm_rule_right`` when the rule is factorised."""

    name = "phm"
    tensors = ("down_s", "down_t", "down_w", "down_bias", "up_s", "up_t", "up_w", "up_bias", "phm_rule",
               "phm_rule_left", "phm_rule_right")
    shared = ("phm_rule", "phm_rule_left", "phm_rule_right", "down_s", "down_t", "up_s", "up_t")

    @classmethod
    def create(cls, config: CompacterConfig, sizes: Sizes) -> dict[str, torch.Tensor]:
        routes, in_features, width, out_features = sizes
        check_divisible(config.phm_dim, adapter_input_size=in_features, hidden_size=out_features,
                        bottleneck_size=width)
        tensors = {} if config.shared_W_phm else cls._factor_tensors(config, sizes)
        for projection, fan_out in (("down", width), ("up", out_features)):
            if config.phm_bias:
                tensors[f"{projection}_bias"] = torch.zeros(routes, fan_out)
        if not config.shared_phm_rule:
            tensors.update(cls._rule_tensors(config, (2,)))
        return tensors

    @staticmethod
    def _factor_tensors(config: CompacterConfig, sizes: Sizes) -> dict[str, torch.Tensor]:
        routes, in_features, width, out_features = sizes
        n, rank = config.phm_dim, config.phm_rank
        tensors = {}
        for projection, (fan_in, fan_out) in (("down", (in_features, width)), ("up", (width, out_features))):
            p, q = fan_in // n, fan_out // n
            if config.factorized_phm_W:
                tensors[f"{projection}_s"] = torch.empty(routes, n, p, rank)
                tensors[f"{projection}_t"] = torch.empty(routes, n, rank, q)
            else:
                tensors[f"{projection}_w"] = torch.empty(routes, n, p, q)
        return tensors

    @classmethod
    def has_shared(cls, config) -> bool:
        return config.shared_phm_rule or config.shared_W_phm

    @classmethod
    def shared_tensors(cls, config) -> tuple[str, ...]:
        rules = cls.shared[:3] if config.shared_phm_rule else ()
        return rules + (cls.shared[3:] if config.shared_W_phm else ())

    @classmethod
    def create_shared(cls, config: CompacterConfig, sizes: Sizes) -> dict[str, torch.Tensor]:
        shared = cls._rule_tensors(config, ()) if config.shared_phm_rule else {}
        if config.shared_W_phm:  # AdapterHub's shared B_i: one set of factors for every layer
            factors = cls._factor_tensors(config, sizes)
            cls._init_factors(factors, config.init_weights)
            shared.update(factors)
        return shared

    @classmethod
    def check_shared(cls, shared: dict, sizes: Sizes) -> None:
        factors = {k: v for k, v in shared.items() if not k.startswith("phm_rule")}
        if factors and cls.sizes_of({**factors, **{k: v for k, v in shared.items()}})[1:] != tuple(sizes)[1:]:
            raise ValueError(f"`shared_W_phm=True` shares one set of PHM factors, sized for another module "
                             f"({cls.sizes_of(factors)[1:]} vs {tuple(sizes)[1:]} here): adapt modules of one size.")

    @staticmethod
    def _rule_tensors(config: CompacterConfig, lead: tuple) -> dict[str, torch.Tensor]:
        n = config.phm_dim
        if config.factorized_phm_rule:
            rules = {"phm_rule_left": torch.empty(*lead, n, n, 1), "phm_rule_right": torch.empty(*lead, n, 1, n)}
        else:
            rules = {"phm_rule": torch.empty(*lead, n, n, n)}
        for rule in rules.values():
            if config.init_weights is False:
                nn.init.normal_(rule, std=0.5)  # order-1 rules: a clearly non-identity adapter for tests
            else:
                init_rule(rule, config.phm_c_init, config.phm_init_range)
        return rules

    @classmethod
    def reset(cls, tensors, config: CompacterConfig, init_weights) -> None:
        with torch.no_grad():
            cls._init_factors(tensors, init_weights)
            for projection in ("down", "up"):
                bias = tensors.get(f"{projection}_bias")
                if init_weights is False and bias is not None:
                    nn.init.normal_(bias, std=0.1)
                elif bias is not None:
                    nn.init.zeros_(bias)

    @staticmethod
    def _init_factors(tensors, init_weights) -> None:
        with torch.no_grad():
            for projection in ("down", "up"):
                factors = [tensors[k] for k in (f"{projection}_s", f"{projection}_t", f"{projection}_w") if k in tensors]
                for factor in factors:  # Glorot-uniform over each B_i's own fan (AdapterHub's default)
                    bound = math.sqrt(6.0 / (factor.shape[-2] + factor.shape[-1]))
                    nn.init.uniform_(factor, -bound, bound)
            up = tensors.get("up_t", tensors.get("up_w"))
            if init_weights is True and up is not None:
                nn.init.zeros_(up)

    @classmethod
    def grow(cls, tensors, config, routes: int):
        rules = {k: v for k, v in tensors.items() if k.startswith("phm_rule")}
        grown = super().grow({k: v for k, v in tensors.items() if k not in rules}, config, routes)
        return {**grown, **rules}

    @classmethod
    def sizes_of(cls, tensors) -> Sizes:
        routes, n, p = next(tensors[k] for k in ("down_s", "down_w") if k in tensors).shape[:3]
        q_down = (tensors["down_t"] if "down_t" in tensors else tensors["down_w"]).shape[-1]
        q_up = (tensors["up_t"] if "up_t" in tensors else tensors["up_w"]).shape[-1]
        return Sizes(routes, n * p, n * q_down, n * q_up)

    @classmethod
    def projections(cls, tensors) -> Projections:
        down_rule, up_rule = cls._rules(tensors)
        return Projections(cls._weight(tensors, "down", down_rule), tensors.get("down_bias"),
                           cls._weight(tensors, "up", up_rule), tensors.get("up_bias"))

    @staticmethod
    def _rules(tensors) -> tuple[torch.Tensor, torch.Tensor]:
        if "phm_rule" in tensors:
            rule = tensors["phm_rule"]
        else:
            rule = torch.matmul(tensors["phm_rule_left"], tensors["phm_rule_right"])
        return (rule[0], rule[1]) if rule.dim() == 4 else (rule, rule)

    @staticmethod
    def _weight(tensors, projection: str, rule: torch.Tensor) -> torch.Tensor:
        """``sum_i kron(A_i, B_i)`` for every route, in ``nn.Linear`` layout (R, out, in)."""
        if f"{projection}_s" in tensors:
            blocks = torch.matmul(tensors[f"{projection}_s"], tensors[f"{projection}_t"])
        else:
            blocks = tensors[f"{projection}_w"]
        routes, n, p, q = blocks.shape
        weight = torch.einsum("iab,ripq->rapbq", rule.to(blocks.dtype).to(blocks.device), blocks)
        return weight.reshape(routes, n * p, n * q).transpose(1, 2)


class CompacterLayer(AdapterLayer):
    """A module with Compacter adapters: bottlenecks whose projections are PHM layers.

    With ``shared_phm_rule`` one rule serves every layer: the first layer that gets it registers it (so it is saved,
    moved and cast once, with the model); the others keep an unregistered reference (``shared_refs``).
    """

    prefix = "compacter_"
    adapter_kind = "Compacter"


def rehome_shared_tensors(model) -> None:
    """Register every shared tensor in a layer again if the layer that held it is gone (e.g. pruned away)."""
    layers = [m for m in model.modules() if isinstance(m, AdapterLayer)]
    present = {id(layer) for layer in layers}
    new_owner = {}
    for layer in layers:
        for (tensor, name), owner in list(layer.shared_refs.items()):
            if id(owner) in present:
                continue
            key = (id(owner), tensor, name)
            if key not in new_owner:
                del layer.shared_refs[(tensor, name)]
                layer.container(tensor)[name] = owner.container(tensor)[name]
                new_owner[key] = layer
            else:
                layer.shared_refs[(tensor, name)] = new_owner[key]
