"""The non-linearities an adapter may use between its down- and up-projection.

A fixed allow-list rather than transformers' whole ``ACT2FN``: every entry maps 0 to 0, which the mixed-batch
forward relies on (a zero-padded bottleneck unit must stay zero), and the list is what configs validate against.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _gelu_new(x: torch.Tensor) -> torch.Tensor:
    # GPT-2's tanh approximation of GELU ("gelu_new" in transformers)
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_new": _gelu_new,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
    "identity": lambda x: x,
}

ALLOWED_NON_LINEARITIES = tuple(ACTIVATIONS)


def check_non_linearity(value: str, field_name: str = "non_linearity") -> str:
    """Return the lower-cased name or raise a ValueError naming the field and the allowed values."""
    if not isinstance(value, str) or value.lower() not in ACTIVATIONS:
        raise ValueError(f"`{field_name}` must be one of {list(ALLOWED_NON_LINEARITIES)}, got {value!r}.")
    return value.lower()


def get_activation(name: str):
    return ACTIVATIONS[check_non_linearity(name)]
