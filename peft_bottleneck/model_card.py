"""The model card of a saved adapter, written with ``huggingface_hub.ModelCard``: what the adapter is, on which base,
its settings and size, and (when ``peft-bottleneck train`` wrote it) the data, the metrics and the command.

``save_pretrained`` of a model with our adapters writes this card in place of PEFT's template;
``push_adapter_to_hub`` and the ``train`` command use the same one.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from huggingface_hub import ModelCard, ModelCardData

from .files import atomic_write_text

# fields of PEFT's base config that say nothing about the adapter's computation
_BOOKKEEPING = {"peft_type", "base_model_name_or_path", "revision", "inference_mode", "auto_mapping", "task_type",
                "peft_version", "format_version", "layer_map", "composition"}
_PIPELINES = {"SEQ_CLS": "text-classification", "TOKEN_CLS": "token-classification", "CAUSAL_LM": "text-generation",
              "SEQ_2_SEQ_LM": "text2text-generation", "QUESTION_ANS": "question-answering",
              "FEATURE_EXTRACTION": "feature-extraction"}


@dataclass
class TrainingRecord:
    """What ``peft-bottleneck train`` knows of a run, for the card."""

    data: list[str] = field(default_factory=list)  # e.g. "train: reviews.csv (4,000 rows)"
    metrics: dict = field(default_factory=dict)
    command: Optional[str] = None
    labels: Optional[list] = None


def base_model_name(name_or_path: Optional[str]) -> tuple[Optional[str], Optional[str]]:
    """The base model as a card may name it, and a note when it was a local folder: a Hub id stays as given, a
    folder is named by its own name (a card never records a path on the machine that trained it)."""
    if not name_or_path:
        return None, None
    text = str(name_or_path)
    if os.path.isabs(text) or os.path.isdir(text) or text.startswith((".", "~")):
        name = Path(text.rstrip("/\\")).expanduser().name or text
        return name, (f"The base model was a local folder named `{name}` (its path on the training machine is not "
                      "recorded); load that model, or the Hub model it was made from, as the base.")
    return text, None


def settings_of(config) -> dict:
    """The config's fields that differ from a default config of its class (what makes this adapter what it is)."""
    try:
        reference = type(config)()
    except (TypeError, ValueError):  # a class without defaults for every field (the controller's tasks)
        reference = None
    changed = {}
    for spec in dataclasses.fields(config):
        if spec.name in _BOOKKEEPING or spec.name.startswith("_"):
            continue
        if reference is not None:
            default = getattr(reference, spec.name, None)
        else:
            default = (spec.default if spec.default is not dataclasses.MISSING
                       else spec.default_factory() if spec.default_factory is not dataclasses.MISSING else None)
        value = getattr(config, spec.name, None)
        if value != default:
            changed[spec.name] = sorted(value) if isinstance(value, set) else value
    return changed


def trainable_parameters(model) -> tuple[int, int]:
    counter = getattr(model, "get_nb_trainable_parameters", None)
    if counter is not None:  # PEFT's own count
        return counter()
    parameters = list(model.parameters())
    return sum(p.numel() for p in parameters if p.requires_grad), sum(p.numel() for p in parameters)


def adapter_model_card(model, training: Optional[TrainingRecord] = None) -> ModelCard:
    """A full card for ``model``'s adapters (a ``PeftModel``); no template placeholders."""
    from . import __version__

    configs = dict(model.peft_config)
    first = next(iter(configs.values()))
    base, base_note = base_model_name(first.base_model_name_or_path)
    task_type = getattr(first.task_type, "value", first.task_type)
    kinds = sorted({config.peft_type.value.lower() for config in configs.values()})
    data = ModelCardData(base_model=base, library_name="peft", pipeline_tag=_PIPELINES.get(task_type),
                         tags=["peft", "peft-bottleneck", f"peft-bottleneck-{__version__}", "adapter", *kinds])
    trainable, total = trainable_parameters(model)
    title = f"{', '.join(type(c).__name__ for c in configs.values())} on {base or 'a transformers model'}"
    lines = [f"# {title}", "",
             f"Adapters made with [peft-bottleneck](https://pypi.org/project/peft-bottleneck/) {__version__}, a "
             "plugin that adds bottleneck adapters to Hugging Face PEFT.", ""]
    if base_note:
        lines += [base_note, ""]
    lines += ["## Adapters", "", "| name | kind | settings (other than the defaults) |", "|---|---|---|"]
    for name, config in configs.items():
        settings = ", ".join(f"`{k}={v!r}`" for k, v in settings_of(config).items()) or "defaults"
        lines.append(f"| `{name}` | {type(config).__name__} (PEFT type `{config.peft_type.value}`) | {settings} |")
    lines += ["", f"Trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)"
              + (f"; task type `{task_type}`." if task_type else "."), ""]
    if training is not None:
        lines += _training_section(training)
    lines += ["## How to load", "", "```python",
              "import peft_bottleneck  # optional once installed: its start-up hook registers the types",
              "from peft import PeftModel", "",
              f"model = PeftModel.from_pretrained(base_model, \"<this folder or repo>\")  # base_model: {base or '...'}",
              "```", "", "## Framework versions", "", *_versions(__version__), ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def _training_section(training: TrainingRecord) -> list[str]:
    lines = ["## Training", ""]
    lines += [f"- {item}" for item in training.data]
    if training.labels:
        lines.append(f"- labels: {', '.join(f'`{label}`' for label in training.labels)}")
    if training.metrics:
        lines += ["", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                  for k, v in training.metrics.items()]
    if training.command:
        lines += ["", "Command:", "", "```bash", training.command, "```"]
    return lines + [""]


def _versions(ours: str) -> list[str]:
    import peft
    import torch
    import transformers

    return [f"- peft-bottleneck {ours}", f"- PEFT {peft.__version__}", f"- transformers {transformers.__version__}",
            f"- torch {torch.__version__}"]


def write_model_card(folder, model, training: Optional[TrainingRecord] = None) -> Path:
    path = Path(folder) / "README.md"
    atomic_write_text(path, str(adapter_model_card(model, training)))
    return path
