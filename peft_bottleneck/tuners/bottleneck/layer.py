from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers.pytorch_utils import Conv1D

from ...activations import get_activation
from ...routing import Routing, gathered_bottleneck, stack_adapter_weights
from .config import AdapterConfigBase

MERGE_ERROR = (
    "{kind} adapters cannot be merged into the base weights: the adapter computes W_up f(W_down h) with a "
    "non-linearity f (and, for sequential adapters, on the module's output), which no single linear layer "
    "reproduces. Keep the adapter attached, or call `unload()` to get the base model back without it."
)


def _projection_dims(module: nn.Module) -> tuple[int, int]:
    """(in, out) features of a module: its own if it is a projection, else its first and last projection's."""
    projections = [m for m in module.modules() if isinstance(m, (nn.Linear, Conv1D))]
    if not projections:
        raise TypeError(
            f"Cannot size an adapter for {type(module).__name__}: it holds no nn.Linear or Conv1D. Target linear "
            "layers (or blocks made of them) instead."
        )
    first, last = projections[0], projections[-1]
    in_features = first.in_features if isinstance(first, nn.Linear) else first.weight.shape[0]
    out_features = last.out_features if isinstance(last, nn.Linear) else last.weight.shape[1]
    return in_features, out_features


class BottleneckLayer(nn.Module, BaseTunerLayer):
    """Wraps a module and adds ``s * W_up f(W_down h)`` to its output, one adapter per name.

    Sequential (this class): ``h`` is the wrapped module's output. Parallel subclasses feed the module's (or a
    sibling's) input instead. Subclasses rename the containers through ``adapter_layer_names`` so each tuner type
    keeps its own key prefix.
    """

    # (down-projections, up-projections, learned scales); trainable, keyed by adapter name
    adapter_layer_names: tuple[str, ...] = ("bottleneck_down", "bottleneck_up", "bottleneck_scale")
    other_param_names: tuple[str, ...] = ("bottleneck_dropout", "non_linearity", "scaling")
    adapter_kind = "Bottleneck"
    # the bottleneck width is the hidden size // reduction factor; an LM-head adapter's hidden size is its input
    width_from_input = False

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, config: AdapterConfigBase, adapter_in_features=None, **kwargs
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        for index, name in enumerate(self.adapter_layer_names):
            # the learned scales (third entry) are bare parameters; everything else is a module per adapter
            setattr(self, name, nn.ParameterDict() if index == 2 else nn.ModuleDict())
        setattr(self, self.other_param_names[0], nn.ModuleDict())  # dropout
        self.non_linearity: dict[str, str] = {}
        self.scaling: dict[str, float | str] = {}
        self._disable_adapters = False
        self.merged_adapters = []
        self.in_features, self.out_features = _projection_dims(self.get_base_layer())
        self.adapter_in_features = adapter_in_features or self.default_adapter_in_features()
        self._routing: Optional[Routing] = None
        self.skip_adapters = False  # AdapterDrop: this layer's adapters are bypassed while set
        self.delta_norms: Optional[list] = None  # set to a list to record adapter output norms (importance)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, **kwargs)

    # containers, under the subclass's names
    @property
    def adapter_down(self) -> nn.ModuleDict:
        return getattr(self, self.adapter_layer_names[0])

    @property
    def adapter_up(self) -> nn.ModuleDict:
        return getattr(self, self.adapter_layer_names[1])

    @property
    def adapter_scale(self) -> nn.ParameterDict:
        return getattr(self, self.adapter_layer_names[2])

    @property
    def adapter_dropout(self) -> nn.ModuleDict:
        return getattr(self, self.other_param_names[0])

    def default_adapter_in_features(self) -> int:
        # a sequential adapter reads the module's output
        return self.out_features

    def update_layer(self, adapter_name: str, config: AdapterConfigBase, **kwargs) -> None:
        self.create_projections(adapter_name, config, **kwargs)
        self.adapter_dropout[adapter_name] = (
            nn.Dropout(config.adapter_dropout) if config.adapter_dropout > 0 else nn.Identity()
        )
        self.non_linearity[adapter_name] = config.non_linearity
        self.scaling[adapter_name] = config.scaling
        if config.scaling == "learned":
            self.adapter_scale[adapter_name] = nn.Parameter(torch.ones(()))
        self.reset_adapter_parameters(adapter_name, config.init_weights)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def bottleneck_width(self, config: AdapterConfigBase) -> int:
        return config.bottleneck_width(self.adapter_in_features if self.width_from_input else self.out_features)

    def create_projections(self, adapter_name: str, config: AdapterConfigBase, **kwargs) -> None:
        width = self.bottleneck_width(config)
        self.adapter_down[adapter_name] = nn.Linear(self.adapter_in_features, width)
        self.adapter_up[adapter_name] = nn.Linear(width, self.out_features)

    def reset_adapter_parameters(self, adapter_name: str, init_weights: bool | str) -> None:
        self.reset_projections(self.adapter_down[adapter_name], self.adapter_up[adapter_name], init_weights)

    @staticmethod
    def reset_projections(down: nn.Module, up: nn.Module, init_weights: bool | str) -> None:
        if init_weights is False:
            return  # nn.Linear's random init on both: a non-identity adapter, for tests
        if init_weights is True:
            # LoRA-style (AdapterHub's "mam_adapter"): trainable down, zero up, so the output starts unchanged
            nn.init.kaiming_uniform_(down.weight, a=math.sqrt(5))
            nn.init.zeros_(up.weight)
        elif init_weights == "bert":
            nn.init.normal_(down.weight, std=0.02)
            nn.init.normal_(up.weight, std=0.02)
        elif init_weights == "houlsby":
            nn.init.trunc_normal_(down.weight, std=1e-2, a=-2e-2, b=2e-2)
            nn.init.trunc_normal_(up.weight, std=1e-2, a=-2e-2, b=2e-2)
        nn.init.zeros_(down.bias)
        nn.init.zeros_(up.bias)

    def _get_base_layer_device_and_dtype(self, base_layer):
        device, dtype = super()._get_base_layer_device_and_dtype(base_layer)
        if device is None:
            # a whole block (e.g. an MLP) has no `weight`: use its first parameter
            first = next(base_layer.parameters(), None)
            if first is not None:
                device, dtype = first.device, first.dtype
        return device, dtype

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        raise ValueError(MERGE_ERROR.format(kind=self.adapter_kind))

    def scale_of(self, adapter_name: str) -> float | torch.Tensor:
        if adapter_name in self.adapter_scale:
            return self.adapter_scale[adapter_name]
        return self.scaling[adapter_name]

    def adapter_delta(self, adapter_name: str, hidden: torch.Tensor) -> torch.Tensor:
        """``s * W_up f(W_down dropout(hidden))`` for one adapter, in the adapter's dtype."""
        return self._unscaled_delta(adapter_name, hidden) * self.scale_of(adapter_name)

    def adapter_weights(self, adapter_name: str) -> tuple[torch.Tensor, ...]:
        """(down weight, down bias, up weight, up bias) in ``nn.Linear`` layout."""
        return self.projection_weights(adapter_name, self.adapter_down[adapter_name], self.adapter_up[adapter_name])

    def projection_weights(self, adapter_name: str, down: nn.Module, up: nn.Module) -> tuple[torch.Tensor, ...]:
        """The weights of one (down, up) pair; subclasses whose projections build their weights override this."""
        return down.weight, down.bias, up.weight, up.bias

    def _unscaled_delta(self, adapter_name: str, hidden: torch.Tensor) -> torch.Tensor:
        down_w, down_b, up_w, up_b = self.adapter_weights(adapter_name)
        hidden = self._cast_input_dtype(self.adapter_dropout[adapter_name](hidden), down_w.dtype)
        activation = get_activation(self.non_linearity[adapter_name])
        return F.linear(activation(F.linear(hidden, down_w, down_b)), up_w, up_b)

    def record_delta(self, delta: torch.Tensor, scale=1.0) -> None:
        if self.delta_norms is not None:  # off by default: costs a norm per call
            self.delta_norms.append((delta.detach().float() * scale).norm(dim=-1).mean())

    def _add_adapter(self, result: torch.Tensor, adapter_name: str, source: torch.Tensor) -> torch.Tensor:
        delta = self._unscaled_delta(adapter_name, source).to(result.dtype)
        scale = self.scale_of(adapter_name)
        self.record_delta(delta, scale)
        if isinstance(scale, torch.Tensor):
            return result + delta * scale.to(result.dtype)
        # a fixed scale rides on the residual add: one pass over the activations instead of two
        return torch.add(result, delta, alpha=scale)

    def take_adapter_input(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """What the adapter reads besides the module's output; a sequential adapter reads only the output."""
        return None

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapter_input = self.take_adapter_input(x)
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters or self.skip_adapters:
            return result
        if self._routing is not None:
            source = result if adapter_input is None else adapter_input
            return result + self.routed_delta(source, self._routing).to(result.dtype)
        for adapter_name in self.active_adapters:
            if adapter_name not in self.adapter_down:
                continue
            result = self._add_adapter(result, adapter_name, result if adapter_input is None else adapter_input)
        return result

    # mixed batches: one adapter per example, gathered from stacked weights in one batched matmul
    def routed_delta(self, hidden: torch.Tensor, routing: Routing) -> torch.Tensor:
        present = {name: self.adapter_weights(name) for name in routing.names if name in self.adapter_down}
        if not present:
            return torch.zeros((), dtype=hidden.dtype, device=hidden.device)
        ref = next(iter(present.values()))[0]
        stacked = stack_adapter_weights(
            [present.get(name) for name in routing.names],
            [self.scale_of(name) if name in present else 0.0 for name in routing.names],
            self.adapter_in_features,
            self.out_features,
            ref,
        )
        activations = [self.non_linearity.get(name, "identity") for name in routing.names]
        codes = routing.codes_for_batch(hidden.shape[0], hidden.device)
        return gathered_bottleneck(self._cast_input_dtype(hidden, ref.dtype), codes, stacked, activations)

    def __repr__(self) -> str:
        return f"{self.adapter_kind.lower()}." + super().__repr__()
