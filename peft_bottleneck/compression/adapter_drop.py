"""AdapterDrop (Rücklé et al. 2021): bypass the adapters of the lowest layers, at inference or at random in training."""

from __future__ import annotations

from typing import Iterable, Optional

import torch
from transformers import TrainerCallback

from ..tuners.base.layer import AdapterLayer
from .stacks import choose_stack


def set_adapter_drop(model, layers: Iterable[int], stack: Optional[str] = None) -> list[int]:
    """AdapterDrop: bypass the adapters in the given layers (e.g. ``range(n)`` for the lowest n) until reset with
    ``set_adapter_drop(model, [])``. Returns the layers now dropped."""
    chosen = set(layers)
    for index, layer in enumerate(choose_stack(model, stack).layers):
        for adapter in (m for m in layer.modules() if isinstance(m, AdapterLayer)):
            adapter.bypass(index in chosen)
    return sorted(chosen)


class AdapterDropCallback(TrainerCallback):
    """AdapterDrop during training: each step, the adapters of the lowest k layers are bypassed, k drawn uniformly
    from 0..max_layers (Rücklé et al. 2021), so the model stays usable with any of them dropped at inference."""

    def __init__(self, max_layers: int, stack: Optional[str] = None, seed: int = 0) -> None:
        self.max_layers, self.stack = max_layers, stack
        self.generator = torch.Generator().manual_seed(seed)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        k = int(torch.randint(0, self.max_layers + 1, (1,), generator=self.generator))
        set_adapter_drop(model, range(k), stack=self.stack)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        set_adapter_drop(model, [], stack=self.stack)


