"""Invertible adapters (MAD-X, Pfeiffer et al. 2020): a coupling block on the embedding output, its inverse before the
output embeddings, per adapter name (AdapterHub's ``inv_adapter`` / ``inv_adapter_reduction_factor``).

The couplings follow AdapterHub's ``NICECouplingBlock`` and ``GLOWCouplingBlock`` layout: the features split in two
halves ``x1`` (the first ``d // 2``) and ``x2``, each subnet ``Linear(n, n // rf) -> f -> Linear(n // rf, m)``.
NICE: ``y1 = x1 + F(x2)``, ``y2 = x2 + G(y1)``. GLOW: ``y1 = e(s2(x2)) * x1 + t2(x2)``, ``y2 = e(s1(y1)) * x2 +
t1(y1)``, with the soft clamp ``e(s) = exp(c * 0.636 * atan(s / c))``, ``c = 5``; the inverses undo them exactly.
(AdapterHub 1.3's GLOW block splits the sequence dimension and fails on a transformer's hidden states, so no fixture
exists for it; ours is the coupling its inverse pass describes, on the feature dimension.)

Which adapter's coupling applies follows the call's route, as the adapter layers do: each example's adapter under
``adapter_names`` (the few distinct ones computed, each kept for its own rows), else the first adapter of the
composition (AdapterHub applies only the first adapter of its active setup), else the first active adapter. The
embedding output is the input of the first block of the model's text tower (what AdapterHub's hooks on BERT's
embeddings, GPT-2's embedding dropout or Llama's token embeddings return).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ...activations import get_activation
from .routing import BASE_ROUTE

CLAMP = 5.0
# (subnet, reads half, writes): reads/writes are "1" (first d // 2 features) or "2" (the rest); GLOW writes twice
SUBNETS = {"nice": (("F", "2", "1", 1), ("G", "1", "2", 1)), "glow": (("s1", "1", "2", 2), ("s2", "2", "1", 2))}


def subnet_shapes(kind: str, features: int, reduction_factor: float) -> dict[str, tuple[int, int, int]]:
    """name -> (input, hidden, output) features of each subnet, as AdapterHub sizes them."""
    halves = {"1": features // 2, "2": features - features // 2}
    out = {}
    for name, reads, writes, times in SUBNETS[kind]:
        n = halves[reads]
        out[name] = (n, int(n // reduction_factor), halves[writes] * times)
    return out


class InvertibleAdapters(nn.ModuleDict):
    """Every adapter's coupling block, keyed by adapter name: ``<prefix>invertible.<adapter>.<subnet>.{0,2}``, the
    layout of AdapterHub's ``invertible_adapters.<adapter>.<subnet>.{0,2}`` (and the shape PEFT's saving expects: the
    adapter name right after the module carrying the tuner prefix)."""

    def __init__(self, tuner=None) -> None:
        super().__init__()
        self.settings: dict[str, tuple[str, str]] = {}  # adapter -> (kind, non-linearity)
        self.__dict__["tuner"] = tuner  # not a submodule; a deep copy of the model maps it to the copy's tuner

    # the hooks are bound methods, so a deep copy of the model rebinds them to the copy's container
    def on_embeddings(self, module, args, kwargs):
        where, value = hidden_argument(args, kwargs)
        if where is None:
            return None
        coupled = self.routed(value, self.tuner.routing_state, self.tuner.active_adapters, reverse=False)
        if where[0] == "arg":
            return (*args[:where[1]], coupled, *args[where[1] + 1:]), kwargs
        return args, {**kwargs, where[1]: coupled}

    def before_head(self, module, args):
        if not args or not torch.is_tensor(args[0]):
            return None
        return (self.routed(args[0], self.tuner.routing_state, self.tuner.active_adapters, reverse=True), *args[1:])

    @property
    def blocks(self) -> nn.ModuleDict:
        return self

    def add(self, name: str, kind: str, features: int, reduction_factor: float, non_linearity: str) -> None:
        shapes = subnet_shapes(kind, features, reduction_factor)
        if any(hidden < 1 for _, hidden, _ in shapes.values()):
            raise ValueError(f"`inv_adapter_reduction_factor={reduction_factor}` leaves no hidden unit for an "
                             f"embedding of {features} features; use a smaller factor.")
        block = nn.ModuleDict({sub: nn.Sequential(nn.Linear(n, h), nn.Identity(), nn.Linear(h, m))
                               for sub, (n, h, m) in shapes.items()})
        for module in block.modules():  # AdapterHub's init_bert_weights
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.blocks[name] = block
        self.settings[name] = (kind, non_linearity)

    def remove(self, name: str) -> None:
        if name in self.blocks:
            del self.blocks[name]
        self.settings.pop(name, None)

    def _subnet(self, name: str, sub: str, x: torch.Tensor) -> torch.Tensor:
        layers = self.blocks[name][sub]
        dtype = layers[0].weight.dtype
        hidden = get_activation(self.settings[name][1])(layers[0](x.to(dtype)))
        return layers[2](hidden).to(x.dtype)

    def couple(self, name: str, x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        kind = self.settings[name][0]
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        if kind == "nice":
            if not reverse:
                y1 = x1 + self._subnet(name, "F", x2)
                return torch.cat([y1, x2 + self._subnet(name, "G", y1)], -1)
            x2 = x2 - self._subnet(name, "G", x1)
            return torch.cat([x1 - self._subnet(name, "F", x2), x2], -1)
        if not reverse:
            s2, t2 = self._subnet(name, "s2", x2).split([x1.shape[-1], x1.shape[-1]], -1)
            y1 = _soft_exp(s2) * x1 + t2
            s1, t1 = self._subnet(name, "s1", y1).split([x2.shape[-1], x2.shape[-1]], -1)
            return torch.cat([y1, _soft_exp(s1) * x2 + t1], -1)
        s1, t1 = self._subnet(name, "s1", x1).split([x2.shape[-1], x2.shape[-1]], -1)
        x2 = (x2 - t1) / _soft_exp(s1)
        s2, t2 = self._subnet(name, "s2", x2).split([x1.shape[-1], x1.shape[-1]], -1)
        return torch.cat([(x1 - t2) / _soft_exp(s2), x2], -1)

    def routed(self, x: torch.Tensor, state, active, reverse: bool) -> torch.Tensor:
        """``x`` through the coupling of the call's adapter(s) (see the module docstring)."""
        routing = state.routing
        if routing is not None and routing.adapters is not None:
            names = [n for n in routing.adapters if n in self.blocks]
            if not names:
                return x
            rows = routing.adapter_rows(x.shape[0], x.device)
            out = x
            for name in names:  # the batch's few distinct adapters, never its examples
                chosen = (rows == routing.adapters.index(name)).view(-1, *([1] * (x.dim() - 1)))
                out = torch.where(chosen, self.couple(name, x, reverse), out)
            return out
        composition = state.active_composition
        first = _first_leaf(composition) if composition is not None else (active[0] if active else None)
        if first is None or first == BASE_ROUTE or first not in self.blocks:
            return x
        return self.couple(first, x, reverse)


def _soft_exp(s: torch.Tensor) -> torch.Tensor:
    return torch.exp(CLAMP * 0.636 * torch.atan(s / CLAMP))


def _first_leaf(block) -> Optional[str]:
    if isinstance(block, str):
        return block
    leaves = block.leaves()
    return leaves[0] if leaves else None


def hidden_argument(args: tuple, kwargs: dict):
    """(where, value) of a block's hidden-states input: ("arg", 0) or ("kw", name)."""
    for index, value in enumerate(args):
        if torch.is_tensor(value) and value.is_floating_point():
            return ("arg", index), value
    for key in ("hidden_states", "x", "hidden_state"):
        if torch.is_tensor(kwargs.get(key)):
            return ("kw", key), kwargs[key]
    return None, None


__all__ = ["InvertibleAdapters", "SUBNETS", "subnet_shapes", "hidden_argument"]
