"""Pushing adapters to the Hub with the model card ``save_pretrained`` writes (``peft_bottleneck.model_card``).

transformers' ``push_to_hub`` (which ``PeftModel`` inherits) replaces the model card with a generic one;
``push_adapter_to_hub`` uploads exactly what ``save_pretrained`` writes, our card included.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

from .model_card import write_model_card


def push_adapter_to_hub(model, repo_id: str, *, revision: Optional[str] = None, private: Optional[bool] = None,
                        token=None, commit_message: str = "Upload adapter", create_pr: bool = False, training=None):
    """Save ``model``'s adapters and upload them to ``repo_id`` (created if needed) with a full model card
    (``training``: a ``peft_bottleneck.model_card.TrainingRecord`` to describe the run)."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)  # writes the card; a training record rewrites it with the run's details
        if training is not None:
            write_model_card(Path(folder), model, training)
        return api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                                 commit_message=commit_message, create_pr=create_pr)
