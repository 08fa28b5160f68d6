"""A learning rate per adapter kind, and one for a new task head, for a good first run without a search.

The rates come from the accuracy benchmark (benchmarks/accuracy.py: MiniLM-L6, AdamW, batch 32, 2 epochs, 10%
warm-up, every grid rate trained with 3 seeds, the new classifier head at ``RECOMMENDED_HEAD_LEARNING_RATE``): a
kind's rate is the grid rate with the best mean validation accuracy on the bundled sentiment task (76 optimizer
steps); ``python benchmarks/learning_rates.py`` redoes the choice from the stored runs and checks it on the bundled
topic task (38 steps; benchmarks/results/learning_rates.md). The head's rate is the head-only baseline's choice, the
same on both tasks. Trained at the adapters' rate instead, a fresh head is the slowest part of a short run: the
topic task then wanted three to eleven times each kind's sentiment rate; with its own rate, five of six kinds'
sentiment rates land within a point of their best topic rate (parallel: 1.4 points below it on topic test).
The rates suit budgets from tens to a few thousand steps on encoders of this size; a long run or a much larger model
usually wants a smaller one. The hypernetwork's rate is the better of the two measured in benchmarks/multitask.py.
"""

from __future__ import annotations

import math
import numbers

# kind: rate. Chosen by benchmarks/learning_rates.py (tests/test_learning_rates.py checks this table against it);
# hypernetwork: benchmarks/results/multitask_hyper_lr3e-4_minilm.json against multitask_hyper_minilm.json (2e-3).
RECOMMENDED_LEARNING_RATES = {
    "houlsby": 3e-3,
    "pfeiffer": 3e-3,
    "parallel": 3.33e-4,
    "compacter": 1e-2,
    "compacter++": 1e-2,
    "low-rank": 1e-2,
    "hypernetwork": 3e-4,
}
# The rate of a new task head (``modules_to_save``) beside the adapters (create_adapter_optimizer): the head-only
# baseline's choice on both bundled tasks (3.3e-2 in its grid; benchmarks/results/accuracy_minilm_head_rate.json).
RECOMMENDED_HEAD_LEARNING_RATE = 3e-2


def adapter_kind_name(config) -> str:
    """The kind a config trains, as named in ``RECOMMENDED_LEARNING_RATES`` (a controller: its adapters' kind)."""
    from .tuners import (AdapterControllerConfig, BottleneckConfig, CompacterConfig, HyperAdapterConfig,
                         LowRankConfig, ParallelAdapterConfig)

    if isinstance(config, AdapterControllerConfig):
        return adapter_kind_name(config.adapter if config.adapter is not None else BottleneckConfig())
    if isinstance(config, HyperAdapterConfig):
        return "hypernetwork"
    if isinstance(config, CompacterConfig):
        return "compacter++" if config.placement == "pfeiffer" else "compacter"
    if isinstance(config, LowRankConfig):
        return "low-rank"
    if isinstance(config, ParallelAdapterConfig):
        return "parallel"
    if isinstance(config, BottleneckConfig):
        return "pfeiffer" if config.placement == "pfeiffer" else "houlsby"
    raise TypeError(f"no recommended learning rate for {type(config).__name__}; kinds with one: "
                    f"{sorted(RECOMMENDED_LEARNING_RATES)}")


def recommended_learning_rate(config) -> float:
    """The learning rate to start with for ``config``'s adapter kind (see the module docstring for its origin)."""
    return RECOMMENDED_LEARNING_RATES[adapter_kind_name(config)]


def head_parameters(model) -> list:
    """The trainable tensors of ``modules_to_save`` copies (PEFT's ``ModulesToSaveWrapper``): a new task head."""
    from peft.utils.other import ModulesToSaveWrapper

    found = {}
    for module in model.modules():
        if isinstance(module, ModulesToSaveWrapper):
            for parameter in module.modules_to_save.parameters():
                if parameter.requires_grad:
                    found[id(parameter)] = parameter
    return list(found.values())


def _check_rate(name: str, value) -> float:
    # numbers.Real: numpy scalars too; bool is a Real but never meant as a rate
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _active_rate(model) -> float:
    """The recommended rate of the model's active adapters (one kind among them, else the caller passes lr=)."""
    configs = getattr(model, "peft_config", None)
    if not configs:
        raise TypeError(f"lr=None needs a PeftModel to find the adapter kind's rate, got {type(model).__name__}; "
                        "pass lr=")
    active = getattr(model, "active_adapters", None) or getattr(model, "active_adapter", None) or list(configs)
    names = [active] if isinstance(active, str) else list(active)
    rates = {recommended_learning_rate(configs[name]) for name in names if name in configs}
    if len(rates) != 1:
        raise TypeError(f"the active adapters {names} have no single recommended rate; pass lr=")
    return rates.pop()


def create_adapter_optimizer(model, optimizer_cls=None, *, lr: float | None = None, head_lr: float | None = None,
                             **kwargs):
    """An optimizer with two parameter groups: the adapters at ``lr`` and the task head (``modules_to_save``, e.g.
    a new classifier) at ``head_lr``. Pass it to the Trainer: ``Trainer(..., optimizers=(optimizer, None))``; the
    Trainer's scheduler (warm-up, decay) then scales both groups.

    ``lr=None``: the adapter kind's recommended rate (``recommended_learning_rate``); ``head_lr=None``:
    ``RECOMMENDED_HEAD_LEARNING_RATE``. A fresh head needs a larger rate than the adapters: at the adapters' rate it
    is still near its random init after a short run. ``optimizer_cls`` defaults to ``torch.optim.AdamW`` with
    ``weight_decay=0.0`` (the Trainer's default, with which the rates were measured); other keyword arguments
    (``weight_decay``, ``betas``...) go to it.
    """
    import torch

    lr = _active_rate(model) if lr is None else _check_rate("lr", lr)
    head_lr = RECOMMENDED_HEAD_LEARNING_RATE if head_lr is None else _check_rate("head_lr", head_lr)
    head = head_parameters(model)
    head_ids = {id(p) for p in head}
    adapters = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    if not adapters and not head:
        raise ValueError("the model has no trainable parameters; attach an adapter (get_peft_model) first")
    groups = [{"params": params, "lr": rate, "name": name}
              for name, params, rate in (("adapters", adapters, lr), ("head", head, head_lr)) if params]
    if optimizer_cls is None:
        optimizer_cls = torch.optim.AdamW
        kwargs.setdefault("weight_decay", 0.0)
    return optimizer_cls(groups, lr=lr, **kwargs)
