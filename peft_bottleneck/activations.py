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

# the same, writing over their input (one allocation fewer): only for a tensor nothing else reads, and only without
# gradients (their backward reads the input); the others have no in-place form
IN_PLACE = {
    "relu": F.relu_,
    "silu": lambda x: F.silu(x, inplace=True),
    "swish": lambda x: F.silu(x, inplace=True),
    "tanh": torch.tanh_,
    "identity": lambda x: x,
}


def check_non_linearity(value: str, field_name: str = "non_linearity") -> str:
    """Return the lower-cased name or raise a ValueError naming the field and the allowed values."""
    if not isinstance(value, str) or value.lower() not in ACTIVATIONS:
        raise ValueError(f"`{field_name}` must be one of {list(ALLOWED_NON_LINEARITIES)}, got {value!r}.")
    return value.lower()


def get_activation(name: str, in_place: bool = False):
    """The non-linearity ``name``; with ``in_place``, its form that overwrites its input where it has one."""
    name = check_non_linearity(name)
    return IN_PLACE.get(name, ACTIVATIONS[name]) if in_place else ACTIVATIONS[name]
