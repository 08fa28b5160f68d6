from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import default_data_collator


class TaskCollator:
    """Moves a dataset's task column into the batch as ``task`` (a LongTensor of task indices).

    Use it with ``TrainingArguments(remove_unused_columns=False)``: the Trainer otherwise drops every column the base
    model's ``forward`` does not name, ``task`` included. Keep only model inputs and the task column in the dataset
    (e.g. ``dataset.map(tokenize, remove_columns=["text"])``).
    """

    def __init__(self, tasks: Sequence[str], collator: Callable | None = None, column: str = "task") -> None:
        self.index = {name: i for i, name in enumerate(tasks)}
        self.collator = collator or default_data_collator
        self.column = column

    def _code(self, value) -> int:
        if isinstance(value, str):
            if value not in self.index:
                raise ValueError(f"Unknown task {value!r} in column {self.column!r}; valid tasks: {list(self.index)}.")
            return self.index[value]
        return int(value)

    def __call__(self, features: list[dict]) -> dict:
        if any(self.column not in f for f in features):
            raise KeyError(f"Every example needs a {self.column!r} column; set remove_unused_columns=False.")
        codes = torch.tensor([self._code(f[self.column]) for f in features], dtype=torch.long)
        batch = self.collator([{k: v for k, v in f.items() if k != self.column} for f in features])
        batch["task"] = codes
        return batch
