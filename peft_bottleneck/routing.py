"""Per-example routing of a batch to named adapters (``adapter_names=[...]`` at inference).

The tuner turns the user's list of names into a :class:`Routing` once per model call; every adapted layer then
gathers its per-adapter weights by ``Routing.codes`` instead of looping over examples.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

BASE_ROUTE = "__base__"


@dataclass(frozen=True)
class Routing:
    """Which adapter each example of a batch uses.

    ``names`` holds the distinct adapter names of the batch (``"__base__"`` meaning no adapter); ``codes[i]`` is the
    position in ``names`` of example ``i``'s adapter.
    """

    names: tuple[str, ...]
    codes: torch.Tensor

    @classmethod
    def from_names(cls, adapter_names: Sequence[str], available: Iterable[str]) -> Routing:
        if isinstance(adapter_names, str) or not isinstance(adapter_names, Sequence):
            raise TypeError(
                f"`adapter_names` must be a list with one adapter name per example, got {type(adapter_names).__name__}."
            )
        available = set(available)
        names = tuple(dict.fromkeys(adapter_names))
        unknown = [name for name in names if name != BASE_ROUTE and name not in available]
        if unknown:
            raise ValueError(
                f"`adapter_names` contains unknown adapter(s) {unknown}; the model has {sorted(available)} "
                f"(or use {BASE_ROUTE!r} for the base model)."
            )
        position = {name: i for i, name in enumerate(names)}
        codes = torch.tensor([position[name] for name in adapter_names], dtype=torch.long)
        return cls(names=names, codes=codes)

    def codes_for_batch(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """Codes for a batch of ``batch_size`` rows.

        Beam search and ``num_return_sequences`` repeat each example in place (``repeat_interleave``), so a batch that
        is a whole multiple of the routed one is expanded the same way; the encoder of an encoder-decoder model still
        sees the original batch.
        """
        routed = self.codes.shape[0]
        if batch_size == routed:
            codes = self.codes
        elif batch_size % routed == 0:
            codes = self.codes.repeat_interleave(batch_size // routed)
        else:
            raise ValueError(
                f"`adapter_names` has {routed} entries but the layer received a batch of {batch_size}; pass one "
                "adapter name per example."
            )
        return codes.to(device, non_blocking=True)
