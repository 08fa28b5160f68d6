"""Adapter averaging (AdapterHub's ``average_adapter``): a new adapter whose every tensor is a weighted sum of the
same tensor of existing adapters, for task arithmetic (negative weights subtract an adapter) and model merging.

AdapterHub offers one combination for bottleneck adapters, ``combine_strategy="linear"`` (its other two,
``lora_linear_only_negate_b`` and ``lora_delta_w_svd``, exist for LoRA only), with the same weight rule as here:
no weights = equal ones; given weights are divided by their sum unless ``normalize_weights=False``. Every tensor of
the adapter is averaged: projections, biases, layer norms, gates, learned scales, Compacter's shared rules and
factors, and the invertible adapter (as AdapterHub's ``_average_invertible_adapter``). A
task head (``modules_to_save``) is not: the new adapter gets the base model's head, as AdapterHub's
``average_adapter`` leaves heads to ``average_head``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Optional, Sequence

import torch

from .tuners.base.layer import AdapterLayer

COMBINE_STRATEGIES = ("linear",)
LORA_ONLY = ("lora_linear_only_negate_b", "lora_delta_w_svd")
# fields that may differ between the averaged adapters (as AdapterHub ignores dropout and init_weights)
IGNORED_FIELDS = ("adapter_dropout", "init_weights", "inference_mode", "composition", "layer_map", "peft_version",
                  "revision", "base_model_name_or_path", "modules_to_save")


def average_adapter(model, adapter_name: str, adapter_list: Sequence[str], weights: Optional[Sequence[float]] = None,
                    *, normalize_weights: bool = True, combine_strategy: str = "linear") -> dict[str, float]:
    """Add ``adapter_name``: every tensor the weighted sum of that tensor in the adapters of ``adapter_list``
    (same kind and size). Returns the weights used. Nothing is added when anything is refused or fails."""
    tuner = getattr(model, "base_model", None)
    if tuner is None or not hasattr(tuner, "routing_state"):
        raise TypeError("average_adapter() takes a PeftModel of peft-bottleneck's adapter types.")
    names = _check_names(tuner, adapter_name, adapter_list)
    used = _weights(names, weights, normalize_weights)
    if combine_strategy not in COMBINE_STRATEGIES:
        extra = " (a LoRA strategy in AdapterHub)" if combine_strategy in LORA_ONLY else ""
        raise ValueError(f"`combine_strategy` must be one of {list(COMBINE_STRATEGIES)} for bottleneck adapters, got "
                         f"{combine_strategy!r}{extra}.")
    config = _common_config(tuner, names)
    model.add_adapter(adapter_name, config)
    try:
        _average_tensors(tuner, adapter_name, used)
    except BaseException:
        model.delete_adapter(adapter_name)
        raise
    return used


def _check_names(tuner, adapter_name: str, adapter_list) -> list[str]:
    if isinstance(adapter_list, str) or not isinstance(adapter_list, Sequence) or not adapter_list:
        raise ValueError(f"`adapter_list` must list at least one adapter name, got {adapter_list!r}.")
    names = list(adapter_list)
    unknown = [n for n in names if n not in tuner.peft_config]
    if unknown:
        raise ValueError(f"`adapter_list` names adapters the model does not have: {unknown}; it has "
                         f"{sorted(tuner.peft_config)}.")
    if len(set(names)) != len(names):
        raise ValueError(f"`adapter_list` names an adapter twice: {names}.")
    if adapter_name in tuner.peft_config:
        raise ValueError(f"`adapter_name` {adapter_name!r} exists already; pick a new name.")
    fusions = [n for n in names if getattr(tuner.peft_config[n], "fusion_of", None)]
    if fusions:
        raise ValueError(f"`adapter_list` names fusion layers {fusions}: average adapters, not fusions.")
    return names


def _weights(names: list[str], weights, normalize: bool) -> dict[str, float]:
    if weights is None:
        return {n: 1.0 / len(names) for n in names}
    values = list(weights)
    if len(values) != len(names) or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and
                                            math.isfinite(w) for w in values):
        raise ValueError(f"`weights` must be one finite number per adapter ({len(names)}), got {weights!r}.")
    total = sum(values) if normalize else 1.0
    if normalize and abs(total) < 1e-12:
        raise ValueError(f"`weights` {values} add up to 0, so they cannot be normalised; pass "
                         "normalize_weights=False to use them as they are.")
    return {n: float(w) / total for n, w in zip(names, values)}


def _common_config(tuner, names: list[str]):
    configs = [tuner.peft_config[n] for n in names]
    first = configs[0]
    kinds = {type(c).__name__ for c in configs}
    if len(kinds) > 1:
        raise ValueError(f"average_adapter: the adapters are of different kinds ({sorted(kinds)}); average adapters of "
                         "one kind and size.")
    reference = _comparable(first)
    for name, config in zip(names[1:], configs[1:]):
        differing = sorted(k for k, v in _comparable(config).items() if reference.get(k) != v)
        if differing:
            raise ValueError(f"average_adapter: {name!r} differs from {names[0]!r} in {differing}; average adapters "
                             "of one kind and size (dropout and init_weights may differ).")
    config = copy.deepcopy(first)
    config.inference_mode = first.inference_mode
    return config


def _comparable(config) -> dict:
    out = {}
    for f in dataclasses.fields(config):
        if f.name in IGNORED_FIELDS:
            continue
        value = getattr(config, f.name)
        out[f.name] = _comparable(value) if dataclasses.is_dataclass(value) else (
            sorted(value) if isinstance(value, set) else value)
    return out


def _average_tensors(tuner, adapter_name: str, weights: dict[str, float]) -> None:
    with torch.no_grad():
        for layer in tuner.model.modules():
            if not isinstance(layer, AdapterLayer) or adapter_name not in layer.settings:
                continue
            target = layer.tensors_of(adapter_name, own_only=True)
            sources = {n: layer.tensors_of(n) for n in weights if n in layer.settings}
            if len(sources) != len(weights):
                missing = sorted(set(weights) - set(sources))
                raise ValueError(f"average_adapter: {missing} have no adapter at a module the others adapt; average "
                                 "adapters with the same targets.")
            for tensor, value in target.items():
                parts = [w * sources[n][tensor].to(value.dtype) for n, w in weights.items() if tensor in sources[n]]
                if len(parts) != len(weights) or any(p.shape != value.shape for p in parts):
                    raise ValueError(f"average_adapter: tensor {tensor!r} has different shapes across the adapters; "
                                     "average adapters of one size.")
                value.copy_(torch.stack(parts).sum(0))
        holder = tuner._invertible()
        if holder is not None and adapter_name in holder:  # AdapterHub averages the invertible adapters too
            target = holder[adapter_name].state_dict()
            for key, value in target.items():
                value.copy_(torch.stack([w * holder[n].state_dict()[key] for n, w in weights.items()]).sum(0))


__all__ = ["COMBINE_STRATEGIES", "average_adapter"]
