"""Ablation on calibration batches: the loss increase when each layer is skipped, one-shot and greedy (SLEB)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Optional, Sequence

import torch

from .stacks import choose_stack


@contextmanager
def skipping(layers: Iterable[torch.nn.Module]):
    """Run the given layers as the identity (their output is their input)."""

    def skip(module, args, kwargs, output):
        h_in = args[0] if args else kwargs.get("hidden_states")
        return (h_in, *output[1:]) if isinstance(output, tuple) else h_in

    handles = [layer.register_forward_hook(skip, with_kwargs=True) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def calibration_loss(model, batches: Sequence[dict]) -> float:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        losses = [float(model(**{k: v.to(device) for k, v in batch.items()}).loss) for batch in batches]
    model.train(was_training)
    return sum(losses) / len(losses)


def calibrate(model, batches: Sequence[dict], stack: Optional[str] = None, greedy_steps: Optional[int] = None):
    """Ablation scores on calibration batches (each with ``labels``): the loss increase when each layer alone is
    skipped, and the greedy order in which SLEB would remove layers (least harm first)."""
    chosen = choose_stack(model, stack)
    layers = list(chosen.layers)
    base_loss = calibration_loss(model, batches)
    one_shot = []
    for layer in layers:
        with skipping([layer]):
            one_shot.append(calibration_loss(model, batches) - base_loss)
    order, removed = [], []
    for _ in range(min(greedy_steps or len(layers) - 1, len(layers) - 1)):
        trials = {}
        for index, layer in enumerate(layers):
            if index not in removed:
                with skipping([layers[i] for i in removed] + [layer]):
                    trials[index] = calibration_loss(model, batches)
        best = min(trials, key=trials.get)
        removed.append(best)
        order.append({"layer": best, "loss": trials[best]})
    return {"stack": chosen.path, "base_loss": base_loss, "ablation": one_shot, "ablation_order": order,
            "ablation_greedy": greedy_scores([step["layer"] for step in order], len(layers))}


def greedy_scores(order: Sequence[int], count: int) -> list[float]:
    """Scores from a removal order: the first removed scores 0, the next 1, ...; layers never removed score highest
    (so ``least_important(scores, k)`` is the first k of the order)."""
    rank = {layer: position for position, layer in enumerate(order)}
    return [float(rank.get(index, len(order))) for index in range(count)]


def least_important(scores: Sequence[float], count: int) -> list[int]:
    """Indices of the ``count`` lowest-scoring layers."""
    return sorted(sorted(range(len(scores)), key=lambda i: scores[i])[:count])


