from __future__ import annotations

import math

import torch
from torch import nn

from ..base.kinds import AdapterKind, Projections, Sizes
from ..base.layer import AdapterLayer


class LowRankKind(AdapterKind):
    """``down_a`` (R, width, r) @ ``down_b`` (R, r, in) and ``up_a`` (R, out, r) @ ``up_b`` (R, r, width), plus
    biases: ``r * (in + 2 * width + out)`` weights per route instead of ``2 * width * d``."""

    name = "low_rank"
    tensors = ("down_a", "down_b", "down_bias", "up_a", "up_b", "up_bias")

    @classmethod
    def create(cls, config, sizes: Sizes) -> dict[str, torch.Tensor]:
        routes, in_features, width, out_features = sizes
        r = config.rank
        if r > min(in_features, width, out_features):
            raise ValueError(f"`rank`={r} is larger than the projections' sizes (in {in_features}, bottleneck "
                             f"{width}, out {out_features}).")
        tensors = {"down_a": torch.empty(routes, width, r), "down_b": torch.empty(routes, r, in_features),
                   "up_a": torch.empty(routes, out_features, r), "up_b": torch.empty(routes, r, width)}
        if config.adapter_biases:
            tensors["down_bias"], tensors["up_bias"] = torch.zeros(routes, width), torch.zeros(routes, out_features)
        return tensors

    @classmethod
    def reset(cls, tensors, config, init_weights) -> None:
        with torch.no_grad():
            for name, factor in tensors.items():
                if name.endswith("bias"):
                    nn.init.normal_(factor, std=0.1) if init_weights is False else nn.init.zeros_(factor)
                else:  # A ~ N(0, 1/r), B ~ N(0, 1/fan_in): the product's entries ~ N(0, 1/fan_in), Kaiming-like
                    nn.init.normal_(factor, std=1.0 / math.sqrt(factor.shape[-1]))
            if init_weights is True:
                nn.init.zeros_(tensors["up_a"])

    @classmethod
    def projections(cls, tensors) -> Projections:
        return Projections(torch.matmul(tensors["down_a"], tensors["down_b"]), tensors.get("down_bias"),
                           torch.matmul(tensors["up_a"], tensors["up_b"]), tensors.get("up_bias"))


class LowRankLayer(AdapterLayer):
    prefix = "low_rank_adapter_"
    adapter_kind = "Low-rank"
