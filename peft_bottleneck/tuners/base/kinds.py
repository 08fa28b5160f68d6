"""Adapter kinds: how one kind of adapter stores its down- and up-projection and builds their weights.

A kind is a small stateless class. Its tensors live in the adapted layer, in one ``nn.ParameterDict`` per tensor
name (``<tuner prefix><tensor>``, keyed by adapter name), each with a leading dimension over the adapter's routes: 1
for a plain adapter, one per task for a controller. ``projections`` turns them into ``Projections``: ordinary
``nn.Linear``-layout weights for every route, which the layer applies for the whole batch or gathers per example.

A new kind is one folder (config, kind + layer, tuner) and one ``register_adapter_type`` line; the controller and the
composition blocks find it here by its config class.
"""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple, Optional

import torch
from torch import nn

from ...registration import register_tuner


class Projections(NamedTuple):
    """Down- and up-projection weights for each of R routes, in ``nn.Linear`` layout."""

    down_weight: torch.Tensor  # (R, width, in)
    down_bias: Optional[torch.Tensor]  # (R, width)
    up_weight: torch.Tensor  # (R, out, width)
    up_bias: Optional[torch.Tensor]  # (R, out)

    @property
    def width(self) -> int:
        return self.down_weight.shape[1]


class Sizes(NamedTuple):
    """What a kind needs to size one adapter in one layer."""

    routes: int
    in_features: int
    width: int
    out_features: int


class AdapterKind:
    """Interface of a kind. ``tensors`` names its per-adapter tensors; ``shared`` those made once per adapter for
    the whole model (registered in the first layer that gets them, referenced by the others)."""

    name: ClassVar[str]
    tensors: ClassVar[tuple[str, ...]]
    shared: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def create(cls, config, sizes: Sizes) -> dict[str, torch.Tensor]:
        """Fresh (uninitialised) per-adapter tensors, keyed by the names in ``tensors``."""
        raise NotImplementedError

    @classmethod
    def has_shared(cls, config) -> bool:
        """Whether adapters of this config have model-wide tensors."""
        return bool(cls.shared)

    @classmethod
    def shared_tensors(cls, config) -> tuple[str, ...]:
        """The names of the model-wide tensors adapters of this config have (a subset of ``shared``)."""
        return cls.shared if cls.has_shared(config) else ()

    @classmethod
    def check_shared(cls, shared: dict, sizes: Sizes) -> None:
        """Raise if a layer of these sizes cannot use the model-wide tensors another layer made."""

    @classmethod
    def create_shared(cls, config, sizes: Sizes) -> dict[str, torch.Tensor]:
        """Model-wide tensors for one adapter, made (and registered) by the first layer that gets the adapter;
        empty for kinds without any."""
        return {}

    @classmethod
    def reset(cls, tensors: dict[str, torch.Tensor], config, init_weights) -> None:
        """Initialise the tensors in place (``init_weights`` as in the configs)."""
        raise NotImplementedError

    @classmethod
    def projections(cls, tensors: dict[str, torch.Tensor]) -> Projections:
        """The weights of every route, built from the tensors (and shared tensors) of one adapter."""
        raise NotImplementedError

    @classmethod
    def grow(cls, tensors: dict[str, torch.Tensor], config, routes: int) -> dict[str, torch.Tensor]:
        """The tensors with ``routes`` more routes appended, freshly initialised; existing routes unchanged."""
        fresh = cls.create(config, Sizes(routes, *cls.sizes_of(tensors)[1:]))
        cls.reset(fresh, config, config.init_weights)
        return {
            name: torch.cat([tensor, fresh[name].to(tensor)]) if name in fresh else tensor
            for name, tensor in tensors.items()
        }

    @classmethod
    def sizes_of(cls, tensors: dict[str, torch.Tensor]) -> Sizes:
        projections = cls.projections(tensors)
        routes, width, in_features = projections.down_weight.shape
        return Sizes(routes, in_features, width, projections.up_weight.shape[1])

    @classmethod
    def parameter_count(cls, config, sizes: Sizes) -> int:
        """Closed form of the per-adapter parameters of one layer (shared tensors not included)."""
        return sum(t.numel() for t in cls.create(config, sizes).values())


def kaiming_down_zero_up(down: torch.Tensor, up: torch.Tensor) -> None:
    """LoRA-style (AdapterHub's "mam_adapter"): each route's down-projection Kaiming-uniform, up-projection zero."""
    bound = 1.0 / math.sqrt(down.shape[-1])  # kaiming_uniform_(a=sqrt(5)) on (width, in)
    nn.init.uniform_(down, -bound, bound)
    nn.init.zeros_(up)


# config class -> kind; a config subclass inherits its parent's kind
_KINDS: dict[type, type[AdapterKind]] = {}


def register_adapter_type(name: str, config_cls: type, model_cls: type, kind: type[AdapterKind]) -> None:
    """Make ``config_cls`` a PEFT tuner type called ``name`` whose adapters are of ``kind``."""
    register_tuner(name, config_cls, model_cls)
    _KINDS[config_cls] = kind


def kind_of(config) -> type[AdapterKind]:
    for cls in type(config).__mro__:
        if cls in _KINDS:
            return _KINDS[cls]
    raise ValueError(
        f"{type(config).__name__} is not an adapter type of this package; registered: "
        f"{sorted(c.__name__ for c in _KINDS)}."
    )


def registered_configs() -> list[type]:
    return list(_KINDS)
