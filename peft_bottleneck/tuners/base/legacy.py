"""Reading adapters saved by peft-bottleneck 0.1.0 (format 1): their tensors, renamed and reshaped to today's.

Format 1 kept each projection as a module (``bottleneck_down.weight``, ``compacter_down.phm_s``) with no route
dimension, and the controller one such module per task (``adapter_controller_down.<task>.weight``). Today every
tensor is one entry of a ``ParameterDict`` with a leading route dimension (``bottleneck_down_weight``).
"""

from __future__ import annotations

import re
from collections import defaultdict

import torch

# format-1 leaf (after "<prefix><projection>.") -> today's tensor suffix
_LEAVES = {"weight": "weight", "bias": "bias", "phm_s": "s", "phm_t": "t", "phm_W": "w"}


def convert_state_dict(state_dict: dict, prefix: str, config) -> dict:
    """Today's keys and shapes for a format-1 state dict; any other state dict is returned unchanged."""
    pattern = re.compile(rf"^(.*\.){re.escape(prefix)}(down|up)\.(?:(\d+)\.)?(weight|bias|phm_s|phm_t|phm_W)$")
    if not any(pattern.match(k) for k in state_dict):
        return state_dict
    converted, per_task = {}, defaultdict(dict)
    for key, value in state_dict.items():
        match = pattern.match(key)
        if match:
            path, projection, task, leaf = match.groups()
            new_key = f"{path}{prefix}{projection}_{_LEAVES[leaf]}"
            if task is None:
                converted[new_key] = value.unsqueeze(0)
            else:
                per_task[new_key][int(task)] = value
        elif key.endswith(f"{prefix}phm_rule.weight"):
            converted[key.removesuffix(".weight")] = value
        elif key.endswith(f"{prefix}scale") and value.dim() == 0:
            converted[key] = value.reshape(1)
        else:
            converted[key] = value
    for key, tasks in per_task.items():
        converted[key] = torch.stack([tasks[i] for i in sorted(tasks)])
    return converted
