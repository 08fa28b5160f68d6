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


_LLM_ADAPTERS = re.compile(r"^(.*\.)adapter_(down|up)\.weight$|^(.*\.)adapter_scaling$")


def convert_llm_adapters(state_dict: dict, prefix: str) -> dict:
    """LLM-Adapters' tensors (``<target>.adapter_down.weight``, ``adapter_up.weight``, ``adapter_scaling``) under our
    names, with the route dimension; other state dicts are returned unchanged."""
    if prefix != "bottleneck_" or not any(_LLM_ADAPTERS.match(k) for k in state_dict):
        return state_dict
    converted = {}
    for key, value in state_dict.items():
        match = _LLM_ADAPTERS.match(key)
        if match is None:
            converted[key] = value
        elif match.group(1) is not None:
            converted[f"{match.group(1)}{prefix}{match.group(2)}_weight"] = value.unsqueeze(0)
        else:
            converted[f"{match.group(3)}{prefix}scale"] = value.reshape(1)
    return converted


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
