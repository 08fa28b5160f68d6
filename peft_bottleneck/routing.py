"""Per-example routing of a batch to named adapters (``adapter_names=[...]`` at inference).

The tuner turns the user's list of names into a :class:`Routing` once per model call; every adapted layer then
gathers its per-adapter weights by ``Routing.codes`` instead of looping over examples.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .activations import get_activation

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


def stack_adapter_weights(weights, scales, in_features: int, out_features: int, ref: torch.Tensor):
    """Stack several adapters' (down_w, down_b, up_w, up_b) into (k, ...) tensors plus a (k,) scale.

    ``weights[j]`` is None for a route without an adapter (the base model): zeros with scale 0, so its rows stay
    exact. Narrower bottlenecks are zero-padded to the widest; exact, since every allowed activation maps 0 to 0.
    """
    width = max(w[0].shape[0] for w in weights if w is not None)
    zeros = ref.new_zeros
    parts = []
    for entry, scale in zip(weights, scales):
        if entry is None:
            down_w, down_b, up_w, up_b = zeros(0, in_features), None, zeros(out_features, 0), None
        else:
            down_w, down_b, up_w, up_b = entry
        rows = down_w.shape[0]
        down_b = zeros(rows) if down_b is None else down_b
        up_b = zeros(out_features) if up_b is None else up_b
        pad = width - rows
        scale = torch.as_tensor(scale, dtype=ref.dtype, device=ref.device)
        parts.append((F.pad(down_w, (0, 0, 0, pad)), F.pad(down_b, (0, pad)), F.pad(up_w, (0, pad)), up_b, scale))
    return tuple(torch.stack(column) for column in zip(*parts))


def gathered_bottleneck(hidden: torch.Tensor, codes: torch.Tensor, stacked, activations) -> torch.Tensor:
    """``s_c * W_up,c f_c(W_down,c h + b) + b_up,c`` with ``c = codes[i]`` for every example ``i``.

    Each example's weights are gathered from the stacked ones and applied with batched matmuls: one pass for the
    whole batch, however many adapters or tasks it mixes. ``activations[j]`` names route ``j``'s non-linearity.
    """
    down_w, down_b, up_w, up_b, scale = stacked
    flat = hidden.reshape(hidden.shape[0], -1, hidden.shape[-1])
    bottleneck = torch.baddbmm(down_b[codes].unsqueeze(1), flat, down_w[codes].transpose(1, 2))
    bottleneck = _routed_activation(bottleneck, activations, codes)
    out = torch.baddbmm(up_b[codes].unsqueeze(1), bottleneck, up_w[codes].transpose(1, 2))
    out = out * scale[codes].view(-1, 1, 1)
    return out.reshape(*hidden.shape[:-1], up_w.shape[1])


def _routed_activation(bottleneck: torch.Tensor, activations, codes: torch.Tensor) -> torch.Tensor:
    kinds = set(activations)
    if len(kinds) == 1:
        return get_activation(activations[0])(bottleneck)
    out = bottleneck
    for kind in kinds:  # at most the few allowed activations, never the examples
        routes = torch.tensor([a == kind for a in activations], device=codes.device)
        out = torch.where(routes[codes].view(-1, 1, 1), get_activation(kind)(bottleneck), out)
    return out
