"""Parameterized hypercomplex multiplication (PHM) layers: weights as sums of Kronecker products.

A PHM linear map from ``in`` to ``out`` features with ``n = phm_dim`` uses ``W = sum_i A_i (x) B_i`` (Zhang et al.
2021), with "rules" ``A_i`` of shape (n, n) and ``B_i`` of shape (in/n, out/n). Compacter (Mahabadi et al. 2021)
shares the rules across layers and writes each ``B_i = s_i t_i^T`` with rank-r factors.

The weight is built once per call from the factors (about ``n * in * out`` multiply-adds, no larger than one token's
matmul times n) and then applied as an ordinary matmul: no Kronecker product is ever formed per token.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn


def check_divisible(phm_dim: int, **sizes: int) -> None:
    """Raise a ValueError naming ``phm_dim`` and every size it does not divide."""
    bad = {name: size for name, size in sizes.items() if size % phm_dim}
    if bad:
        listed = ", ".join(f"{name}={size}" for name, size in bad.items())
        raise ValueError(
            f"`phm_dim`={phm_dim} must divide the PHM layer sizes, but {listed} is not divisible by {phm_dim}. "
            "Choose a phm_dim that divides them, or a bottleneck_size / reduction_factor that gives a multiple."
        )


def kronecker_sum(rule: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """``sum_i kron(rule[i], blocks[i])`` for rule (n, a, b) and blocks (n, p, q): a matrix of shape (a*p, b*q)."""
    n, a, b = rule.shape
    _, p, q = blocks.shape
    return torch.einsum("iab,ipq->apbq", rule, blocks).reshape(a * p, b * q)


def init_rule(rule: torch.Tensor, c_init: str, init_range: float) -> None:
    with torch.no_grad():
        if c_init == "normal":
            rule.normal_(mean=0.0, std=init_range)
        else:
            rule.uniform_(-init_range, init_range)


class PHMRule(nn.Module):
    """The rules ``A_i`` as a module, so one instance can serve many layers: ``weight`` is (n, n, n) when one rule
    serves both projections, or (2, n, n, n) for separate down and up rules."""

    def __init__(self, phm_dim: int, separate_down_up: bool, c_init: str = "normal", init_range: float = 1e-4,
                 device=None) -> None:
        super().__init__()
        shape = (2, phm_dim, phm_dim, phm_dim) if separate_down_up else (phm_dim, phm_dim, phm_dim)
        self.weight = nn.Parameter(torch.empty(shape, device=device))
        init_rule(self.weight, c_init, init_range)

    def down_up(self) -> tuple[torch.Tensor, torch.Tensor]:
        rule = self.weight
        return (rule[0], rule[1]) if rule.dim() == 4 else (rule, rule)


class PHMLinear(nn.Module):
    """``y = x W + b`` with ``W = sum_i A_i (x) B_i``; the rules ``A`` are passed in, so they can be shared.

    Parameters: ``phm_s`` (n, in/n, r) and ``phm_t`` (n, r, out/n) when factorised, else ``phm_W`` (n, in/n, out/n),
    and an optional ``bias``.
    """

    def __init__(self, in_features: int, out_features: int, phm_dim: int, rank: int = 1, factorized: bool = True,
                 bias: bool = True) -> None:
        super().__init__()
        check_divisible(phm_dim, in_features=in_features, out_features=out_features)
        self.in_features, self.out_features, self.phm_dim = in_features, out_features, phm_dim
        self.factorized = factorized
        p, q = in_features // phm_dim, out_features // phm_dim
        if factorized:
            self.phm_s = nn.Parameter(torch.empty(phm_dim, p, rank))
            self.phm_t = nn.Parameter(torch.empty(phm_dim, rank, q))
        else:
            self.phm_W = nn.Parameter(torch.empty(phm_dim, p, q))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.reset_parameters()

    def factors(self) -> tuple[nn.Parameter, ...]:
        return (self.phm_s, self.phm_t) if self.factorized else (self.phm_W,)

    def reset_parameters(self, zero: bool = False) -> None:
        """Glorot-uniform factors (AdapterHub's default); ``zero=True`` zeroes the map (the last factor and bias)."""
        for factor in self.factors():
            fan_in, fan_out = factor.shape[-2], factor.shape[-1]
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            nn.init.uniform_(factor, -bound, bound)
        if zero:
            nn.init.zeros_(self.factors()[-1])
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def blocks(self) -> torch.Tensor:
        """The ``B_i``, shape (n, in/n, out/n)."""
        return torch.bmm(self.phm_s, self.phm_t) if self.factorized else self.phm_W

    def weight(self, rule: torch.Tensor) -> torch.Tensor:
        """``W`` in ``nn.Linear`` layout (out, in)."""
        blocks = self.blocks()
        return kronecker_sum(rule.to(blocks.dtype), blocks).t()

    def forward(self, x: torch.Tensor, rule: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight(rule), self.bias)


def phm_linear_parameter_count(in_features: int, out_features: int, phm_dim: int, rank: int, factorized: bool,
                               bias: bool, rule: Optional[bool] = False) -> int:
    """Closed form of a PHMLinear's parameters (plus its own rule when ``rule``)."""
    weights = rank * (in_features + out_features) if factorized else in_features * out_features // phm_dim
    return weights + (out_features if bias else 0) + (phm_dim**3 if rule else 0)
