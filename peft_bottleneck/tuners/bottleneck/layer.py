from __future__ import annotations

import torch
from torch import nn

from ..base.kinds import AdapterKind, Projections, Sizes, kaiming_down_zero_up
from ..base.layer import AdapterLayer


class LinearKind(AdapterKind):
    """Plain projections: ``down_weight`` (R, width, in), ``up_weight`` (R, out, width) and their biases."""

    name = "bottleneck"
    tensors = ("down_weight", "down_bias", "up_weight", "up_bias")

    @classmethod
    def create(cls, config, sizes: Sizes) -> dict[str, torch.Tensor]:
        routes, in_features, width, out_features = sizes
        tensors = {"down_weight": torch.empty(routes, width, in_features),
                   "up_weight": torch.empty(routes, out_features, width)}
        if config.adapter_biases:
            tensors["down_bias"], tensors["up_bias"] = torch.zeros(routes, width), torch.zeros(routes, out_features)
        return tensors

    @classmethod
    def reset(cls, tensors, config, init_weights) -> None:
        down, up = tensors["down_weight"], tensors["up_weight"]
        with torch.no_grad():
            if init_weights is True or init_weights == "mam_adapter":
                kaiming_down_zero_up(down, up)
            elif init_weights == "bert":
                nn.init.normal_(down, std=0.02)
                nn.init.normal_(up, std=0.02)
            elif init_weights == "houlsby":
                nn.init.trunc_normal_(down, std=1e-2, a=-2e-2, b=2e-2)
                nn.init.trunc_normal_(up, std=1e-2, a=-2e-2, b=2e-2)
            else:  # False: random and clearly non-identity, for tests
                nn.init.normal_(down, std=1.0 / down.shape[-1] ** 0.5)
                nn.init.normal_(up, std=1.0 / up.shape[-1] ** 0.5)
            for bias in (tensors.get("down_bias"), tensors.get("up_bias")):
                if bias is not None:
                    nn.init.normal_(bias, std=0.1) if init_weights is False else nn.init.zeros_(bias)

    @classmethod
    def projections(cls, tensors) -> Projections:
        return Projections(tensors["down_weight"], tensors.get("down_bias"), tensors["up_weight"],
                           tensors.get("up_bias"))


class BottleneckLayer(AdapterLayer):
    """A module with sequential bottleneck adapters on its output (Houlsby / Pfeiffer)."""

    prefix = "bottleneck_"
    adapter_kind = "Bottleneck"
