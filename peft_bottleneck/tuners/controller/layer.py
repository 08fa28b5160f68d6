from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...activations import get_activation
from ...routing import Routing, gathered_bottleneck, stack_adapter_weights
from ..bottleneck.layer import BottleneckLayer
from ..compacter.layer import CompacterLayer
from ..output_adapter.layer import OutputAdapterLayer
from ..parallel.layer import ParallelAdapterLayer
from .config import AdapterControllerConfig

NAMES = ("adapter_controller_down", "adapter_controller_up", "adapter_controller_scale")


class TaskRoutedLayer:
    """Mixin placed before an adapter layer class: one adapter of that kind per task, routed per example.

    ``adapter_controller_down[name]`` is a ``ModuleList`` with one projection per task (the kind's own modules:
    ``nn.Linear`` or ``PHMLinear``). Each forward stacks the tasks' weights and applies them with one gather and two
    batched matmuls (``routing.gathered_bottleneck``), whatever mix of tasks the batch holds.
    """

    adapter_layer_names = NAMES
    other_param_names = ("adapter_controller_dropout", "non_linearity", "scaling", "task_names")
    for_output_adapter = False

    def __init__(self, *args, **kwargs) -> None:
        self.__dict__["task_names"] = {}  # adapter name -> tuple of task names (("*",) for one shared adapter)
        self.__dict__["task_routing"] = {}  # adapter name -> Routing, set by the tuner on every forward
        super().__init__(*args, **kwargs)

    def kind_config(self, config: AdapterControllerConfig):
        kind = config.output_adapter if self.for_output_adapter else config.adapter
        return replace(kind, inference_mode=config.inference_mode)

    def update_layer(self, adapter_name: str, config: AdapterControllerConfig, **kwargs) -> None:
        count = config.routed_task_count(self.for_output_adapter)
        self.task_names[adapter_name] = tuple(config.tasks) if count > 1 else ("*",)
        kind = self.kind_config(config)
        super().update_layer(adapter_name, kind, **kwargs)
        if kind.scaling == "learned":  # one learned scale per task
            device = self.adapter_scale[adapter_name].device
            self.adapter_scale[adapter_name] = nn.Parameter(torch.ones(count, device=device))
            self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def create_projections(self, adapter_name: str, config, **kwargs) -> None:
        count = len(self.task_names[adapter_name])
        self.adapter_down[adapter_name], self.adapter_up[adapter_name] = self._new_projections(
            adapter_name, config, count, **kwargs
        )

    def _new_projections(self, adapter_name: str, config, count: int, **kwargs):
        """``count`` fresh (down, up) pairs made by the adapter kind's own ``create_projections``."""
        existing = [c.pop(adapter_name) if adapter_name in c else None for c in (self.adapter_down, self.adapter_up)]
        downs, ups = nn.ModuleList(), nn.ModuleList()
        for _ in range(count):
            super().create_projections(adapter_name, config, **kwargs)
            downs.append(self.adapter_down.pop(adapter_name))
            ups.append(self.adapter_up.pop(adapter_name))
        for container, modules in zip((self.adapter_down, self.adapter_up), existing):
            if modules is not None:
                container[adapter_name] = modules
        return downs, ups

    def reset_adapter_parameters(self, adapter_name: str, init_weights) -> None:
        for down, up in zip(self.adapter_down[adapter_name], self.adapter_up[adapter_name]):
            self.reset_projections(down, up, init_weights)

    def add_task(self, adapter_name: str, config: AdapterControllerConfig, **kwargs) -> None:
        """Append a fresh adapter for ``config.tasks[-1]``; the existing tasks' weights are untouched."""
        if self.task_names[adapter_name] == ("*",):
            return  # one shared adapter serves every task
        kind = self.kind_config(config)
        downs, ups = self._new_projections(adapter_name, kind, 1, **kwargs)
        self.reset_projections(downs[0], ups[0], kind.init_weights)
        reference = self.adapter_down[adapter_name][0]
        device = next(reference.parameters()).device
        dtype = next(reference.parameters()).dtype
        self.adapter_down[adapter_name].append(downs[0].to(device, dtype))
        self.adapter_up[adapter_name].append(ups[0].to(device, dtype))
        if adapter_name in self.adapter_scale:
            old = self.adapter_scale[adapter_name]
            self.adapter_scale[adapter_name] = nn.Parameter(torch.cat([old.data, old.data.new_ones(1)]))
        self.task_names[adapter_name] = tuple(config.tasks)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def task_delta(self, adapter_name: str, hidden: torch.Tensor) -> torch.Tensor:
        weights = [
            self.projection_weights(adapter_name, down, up)
            for down, up in zip(self.adapter_down[adapter_name], self.adapter_up[adapter_name])
        ]
        hidden = self._cast_input_dtype(self.adapter_dropout[adapter_name](hidden), weights[0][0].dtype)
        scale = self.scale_of(adapter_name)
        activation = self.non_linearity[adapter_name]
        if len(weights) == 1:  # one adapter shared by all tasks: nothing to route
            down_w, down_b, up_w, up_b = weights[0]
            return F.linear(get_activation(activation)(F.linear(hidden, down_w, down_b)), up_w, up_b) * scale
        routing = self.task_routing.get(adapter_name)
        if routing is None:
            raise RuntimeError(
                f"Adapter {adapter_name!r} routes by task {list(self.task_names[adapter_name])}, but no `task` was "
                "given for this forward."
            )
        scales = scale if isinstance(scale, torch.Tensor) else [scale] * len(weights)
        stacked = stack_adapter_weights(weights, scales, self.adapter_in_features, self.out_features, weights[0][0])
        codes = routing.codes_for_batch(hidden.shape[0], hidden.device)
        return gathered_bottleneck(hidden, codes, stacked, [activation] * len(weights))

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapter_input = self.take_adapter_input(x)
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters or self.skip_adapters:
            return result
        for adapter_name in self.active_adapters:
            if adapter_name in self.adapter_down:
                source = result if adapter_input is None else adapter_input
                delta = self.task_delta(adapter_name, source).to(result.dtype)
                self.record_delta(delta)
                result = result + delta
        return result


class TaskRoutedBottleneckLayer(TaskRoutedLayer, BottleneckLayer):
    adapter_kind = "Task-routed bottleneck"


class TaskRoutedParallelLayer(TaskRoutedLayer, ParallelAdapterLayer):
    adapter_kind = "Task-routed parallel"


class TaskRoutedCompacterLayer(TaskRoutedLayer, CompacterLayer):
    adapter_layer_names = (*NAMES, "adapter_controller_phm_rule")
    other_param_names = (
        "adapter_controller_dropout", "non_linearity", "scaling", "adapter_controller_shared_rule_refs", "task_names"
    )
    adapter_kind = "Task-routed Compacter"


class TaskRoutedOutputLayer(TaskRoutedLayer, OutputAdapterLayer):
    adapter_kind = "Task-routed output"
    for_output_adapter = True


def routing_for(config: AdapterControllerConfig, task) -> Routing | None:
    """The per-example routing for ``task`` (a name, one name per example, or a LongTensor of indices)."""
    tasks = config.tasks
    if task is None:
        if config.use_single_adapter:
            return None
        if config.default_task is None:
            raise ValueError(
                f"This adapter routes by task ({tasks}): pass `task=` to forward/generate (a task name, a list with "
                "one name per example, or a LongTensor of task indices), or set `default_task` in the config."
            )
        task = config.default_task
    if isinstance(task, str):
        task = [task]
    if isinstance(task, torch.Tensor):
        codes = task.reshape(-1).long()
    elif isinstance(task, (list, tuple)) and all(isinstance(t, str) for t in task):
        unknown = sorted({t for t in task if t not in tasks})
        if unknown:
            raise ValueError(f"Unknown task(s) {unknown}; the valid tasks are {tasks}.")
        index = {name: i for i, name in enumerate(tasks)}
        codes = torch.tensor([index[t] for t in task], dtype=torch.long)
    elif isinstance(task, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in task):
        codes = torch.tensor(task, dtype=torch.long)
    else:
        raise TypeError(f"`task` must be a task name, a list of names or of indices, or a LongTensor; got {task!r}.")
    if codes.numel() == 0:
        raise ValueError("`task` is empty.")
    low, high = int(codes.min()), int(codes.max())
    if low < 0 or high >= len(tasks):
        raise ValueError(f"Task index out of range: got {low if low < 0 else high}; valid indices are 0..{len(tasks) - 1} "
                         f"for the tasks {tasks}.")
    if config.use_single_adapter:
        return None
    return Routing(names=tuple(tasks), codes=codes)
