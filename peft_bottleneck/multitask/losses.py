"""Multi-task classification on one joint head: each example's softmax covers only its own task's labels."""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F


class TaskMaskedLoss:
    """A ``Trainer(compute_loss_func=...)`` loss for several classification tasks sharing one head.

    ``label_counts`` maps each task to its number of classes, in head order: ``{"sentiment": 2, "topic": 5}`` means
    logits 0-1 are sentiment's and 2-6 topic's, and labels are offset the same way (``offsets``). Cross-entropy is
    taken over the example's own task's logits only, so one task's examples never push down another task's
    classes (a plain softmax over all 7 would). The task is read from the label, so no extra column is needed.
    """

    def __init__(self, label_counts: Mapping[str, int]) -> None:
        counts = dict(label_counts)
        if not counts or any(not isinstance(n, int) or n < 1 for n in counts.values()):
            raise ValueError(f"`label_counts` must map each task to a positive number of classes, got {counts!r}.")
        self.counts = counts
        starts = torch.tensor([0, *counts.values()]).cumsum(0)
        self.offsets = dict(zip(counts, starts[:-1].tolist()))
        self.task_of_label = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(list(counts.values())))

    def logits_of(self, logits: torch.Tensor, task: str) -> torch.Tensor:
        """The columns of ``task``'s classes (predict with their argmax)."""
        start = self.offsets[task]
        return logits[..., start : start + self.counts[task]]

    def __call__(self, outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]
        if logits.shape[-1] != len(self.task_of_label):
            raise ValueError(f"The head has {logits.shape[-1]} outputs but `label_counts` sums to "
                             f"{len(self.task_of_label)}.")
        task_of_label = self.task_of_label.to(labels.device)
        own_task = task_of_label[labels]
        allowed = task_of_label.unsqueeze(0) == own_task.unsqueeze(1)
        masked = logits.float().masked_fill(~allowed, float("-inf"))
        loss = F.cross_entropy(masked, labels, reduction="sum")
        return loss / (num_items_in_batch if num_items_in_batch is not None else labels.numel())
