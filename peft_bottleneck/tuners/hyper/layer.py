from __future__ import annotations

import math

import torch
from torch import nn

from ..base.kinds import AdapterKind, Projections, Sizes
from ..base.layer import AdapterLayer


class HyperKind(AdapterKind):
    """Weights generated for every route (task) at once from ``z = relu(W_h [task_embedding; layer_embedding] +
    b_h)``: ``W_down = G_dw z + c_dw`` (width x in), ``b_down = G_db z + c_db``, ``W_up = G_uw z + c_uw`` (out x
    width), ``b_up = G_ub z + c_ub``. Shared by every layer (made by the first): ``task_embeddings`` (T, e_t), ``W_h``,
    ``b_h`` and the generators; per layer: ``layer_embedding`` (1, e_l)."""

    name = "hyper"
    tensors = ("layer_embedding",)
    shared = ("task_embeddings", "hyper_weight", "hyper_bias", "gen_down_weight", "gen_down_weight_bias",
              "gen_down_bias", "gen_down_bias_bias", "gen_up_weight", "gen_up_weight_bias", "gen_up_bias",
              "gen_up_bias_bias")

    @classmethod
    def create(cls, config, sizes: Sizes) -> dict[str, torch.Tensor]:
        return {"layer_embedding": torch.empty(1, config.layer_embedding_dim)}

    @classmethod
    def create_shared(cls, config, sizes: Sizes) -> dict[str, torch.Tensor]:
        routes, d_in, width, d_out = sizes
        h = config.hypernetwork_dim
        t = {
            "task_embeddings": torch.randn(routes, config.task_embedding_dim),
            "hyper_weight": torch.randn(h, config.task_embedding_dim + config.layer_embedding_dim) / math.sqrt(
                config.task_embedding_dim + config.layer_embedding_dim),
            "hyper_bias": torch.zeros(h),
            # a generated down-projection starts Kaiming-like: entries of about 1 / sqrt(in)
            "gen_down_weight": torch.randn(width, d_in, h) / math.sqrt(h * d_in),
            "gen_down_weight_bias": torch.zeros(width, d_in),
            "gen_down_bias": torch.zeros(width, h), "gen_down_bias_bias": torch.zeros(width),
            "gen_up_weight": torch.zeros(d_out, width, h), "gen_up_weight_bias": torch.zeros(d_out, width),
            "gen_up_bias": torch.zeros(d_out, h), "gen_up_bias_bias": torch.zeros(d_out),
        }
        if config.init_weights is False:  # random up-projections too: a clearly non-identity adapter (tests)
            t["gen_up_weight"].normal_(std=1.0 / math.sqrt(h * width))
            t["gen_up_bias"].normal_(std=0.1 / math.sqrt(h))
        return t

    @classmethod
    def check_shared(cls, shared: dict, sizes: Sizes) -> None:
        _, d_in, width, d_out = sizes
        if tuple(shared["gen_down_weight"].shape[:2]) != (width, d_in) or shared["gen_up_weight"].shape[0] != d_out:
            raise ValueError(f"A hypernetwork adapter generates one shape for every adapted module, {tuple(shared['gen_up_weight'].shape[:1])} x "
                             f"{tuple(shared['gen_down_weight'].shape[:2])}; this module needs out {d_out}, "
                             f"(width, in) ({width}, {d_in}). Adapt modules of one size only.")

    @classmethod
    def reset(cls, tensors, config, init_weights) -> None:
        with torch.no_grad():
            nn.init.normal_(tensors["layer_embedding"])

    @classmethod
    def projections(cls, t) -> Projections:
        routes = t["task_embeddings"].shape[0]
        inputs = torch.cat([t["task_embeddings"], t["layer_embedding"].expand(routes, -1)], -1)
        z = torch.relu(nn.functional.linear(inputs, t["hyper_weight"], t["hyper_bias"]))
        return Projections(*(_generate(z, t[f"gen_{name}"], t[f"gen_{name}_bias"])
                             for name in ("down_weight", "down_bias", "up_weight", "up_bias")))

    @classmethod
    def grow(cls, tensors, config, routes: int):
        """A new task is one more embedding (in the layer that holds the shared tensors; the others hold none)."""
        if "task_embeddings" not in tensors:
            return dict(tensors)
        old = tensors["task_embeddings"]
        return {**tensors, "task_embeddings": torch.cat([old, torch.randn(routes, old.shape[1]).to(old)])}


def _generate(z: torch.Tensor, generator: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """One tensor per route: ``generator`` (..., h) applied to each row of ``z`` (routes, h)."""
    return torch.tensordot(z, generator, dims=([1], [generator.dim() - 1])) + bias


class HyperLayer(AdapterLayer):
    prefix = "hyper_adapter_"
    adapter_kind = "Hypernetwork"
