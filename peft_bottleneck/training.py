"""Resuming a killed training run: the last checkpoint that was written whole.

The HF ``Trainer`` writes a checkpoint file by file; a process killed while it does leaves a folder that
``resume_from_checkpoint=True`` would pick (the newest) and fail on, or half-load. ``last_complete_checkpoint``
skips such folders, saying which and why:

    trainer.train(resume_from_checkpoint=last_complete_checkpoint(args.output_dir))
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Optional

from safetensors import safe_open

logger = logging.getLogger(__name__)
REQUIRED = ("trainer_state.json", "adapter_config.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt")


def checkpoint_problem(folder: Path) -> Optional[str]:
    """Why ``folder`` is not a whole checkpoint of an adapter run, or None."""
    for name in REQUIRED:
        if not (folder / name).is_file() or (folder / name).stat().st_size == 0:
            return f"{name} is missing or empty"
    try:
        json.loads((folder / "trainer_state.json").read_text())
        json.loads((folder / "adapter_config.json").read_text())
        with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as weights:
            if not list(weights.keys()):
                return "adapter_model.safetensors holds no tensors"
    except Exception as error:  # a torn file: unreadable JSON or safetensors
        return f"a file is torn ({type(error).__name__}: {error})"
    return None


def last_complete_checkpoint(output_dir) -> Optional[str]:
    """The newest ``checkpoint-<step>`` folder under ``output_dir`` that was written whole (None if there is none)."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    folders = [p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)]
    for folder in sorted(folders, key=lambda p: int(p.name.split("-")[1]), reverse=True):
        problem = checkpoint_problem(folder)
        if problem is None:
            return str(folder)
        message = f"Skipping checkpoint {folder}: {problem} (torn by an interrupted save)."
        logger.warning(message)
        print(message)
    return None
