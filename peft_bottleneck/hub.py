"""Pushing adapters to the Hub with a model card that says what they are.

transformers' ``push_to_hub`` (which ``PeftModel`` inherits) replaces the model card that ``save_pretrained`` writes
with a generic one; ``push_adapter_to_hub`` uploads exactly what ``save_pretrained`` writes, plus a section naming the
peft-bottleneck version, the adapter type and the base model, and how to load it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

CARD_HEADING = "## peft-bottleneck"


def card_section(model) -> str:
    from . import __version__

    lines = [CARD_HEADING, ""]
    for name, config in model.peft_config.items():
        lines.append(f"- adapter `{name}`: {type(config).__name__} (PEFT type `{config.peft_type.value}`), base model "
                     f"`{config.base_model_name_or_path}`")
    lines += [f"- peft-bottleneck {__version__}", "", "```python",
              "import peft_bottleneck  # optional once installed: its start-up hook registers the types",
              "from peft import PeftModel", "model = PeftModel.from_pretrained(base_model, \"<this repo>\")", "```", ""]
    return "\n".join(lines)


def add_card_section(folder: Path, model) -> None:
    card = folder / "README.md"
    text = card.read_text() if card.exists() else ""
    if CARD_HEADING not in text:
        card.write_text(text.rstrip() + "\n\n" + card_section(model))


def push_adapter_to_hub(model, repo_id: str, *, revision: Optional[str] = None, private: Optional[bool] = None,
                        token=None, commit_message: str = "Upload adapter", create_pr: bool = False):
    """Save ``model``'s adapters and upload them to ``repo_id`` (created if needed) with a full model card."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        add_card_section(Path(folder), model)
        return api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                                 commit_message=commit_message, create_pr=create_pr)
