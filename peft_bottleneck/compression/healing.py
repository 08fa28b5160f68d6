"""After pruning: a short fine-tune with a fresh optimizer, and the compression plan (size, speed, metric per k)."""

from __future__ import annotations

import copy
import statistics
import time
from typing import Callable, Optional, Sequence

import torch

from .calibration import least_important
from .pruning import prune_layers


def heal(model, train_dataset, args, data_collator: Optional[Callable] = None, **trainer_kwargs):
    """A short fine-tune of a pruned model with a fresh optimizer (pruning mid-run would leave stale state)."""
    from transformers import Trainer

    trainer = Trainer(model=model, args=args, train_dataset=train_dataset, data_collator=data_collator,
                      **trainer_kwargs)
    trainer.train()
    return trainer


def compression_plan(model, scores: Sequence[float], targets: Sequence[int], batch: dict,
                     evaluate: Optional[Callable] = None, stack: Optional[str] = None, repeats: int = 5) -> list[dict]:
    """For each number of layers to drop: the layers kept, parameter ratio, measured latency ratio on ``batch``
    (median of ``repeats`` forwards, against the unpruned model in the same run) and, if given, ``evaluate(model)``."""
    def latency(m):
        m.eval()
        with torch.inference_mode():
            m(**batch)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                m(**batch)
                times.append(time.perf_counter() - start)
        return statistics.median(times)

    total = sum(p.numel() for p in model.parameters())
    base_latency = latency(model)
    plan = []
    for count in targets:
        drop = least_important(scores, count)
        pruned = prune_layers(copy.deepcopy(model), drop=drop, stack=stack)
        kept = [i for i in range(len(scores)) if i not in drop]
        entry = {
            "dropped": drop,
            "kept": kept,
            "layer_ratio": len(kept) / len(scores),
            "parameter_ratio": sum(p.numel() for p in pruned.parameters()) / total,
            "speedup": base_latency / latency(pruned),
        }
        if evaluate is not None:
            entry["metric"] = evaluate(pruned)
        plan.append(entry)
    return plan
