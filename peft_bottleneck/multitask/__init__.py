"""Training several tasks at once: the task column into the batch, and a loss per task on one joint head."""

from .collator import TaskCollator
from .losses import TaskMaskedLoss

__all__ = ["TaskCollator", "TaskMaskedLoss"]
