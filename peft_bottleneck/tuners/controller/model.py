from __future__ import annotations

import re
from contextlib import contextmanager

from peft.tuners.tuners_utils import check_target_module_exists

from ...target_modules import output_embeddings_name
from ..bottleneck.model import BottleneckModel
from ..compacter.config import CompacterConfig
from ..compacter.model import CompacterModel, shared_rule_kwargs
from ..parallel.config import ParallelAdapterConfig
from ..parallel.model import ParallelAdapterModel, detach_input_sources, input_source_kwargs
from .config import AdapterControllerConfig
from .layer import (
    TaskRoutedBottleneckLayer,
    TaskRoutedCompacterLayer,
    TaskRoutedLayer,
    TaskRoutedOutputLayer,
    TaskRoutedParallelLayer,
    routing_for,
)

# adapter kind -> (tuner class whose placement rules apply, task-routed layer); Compacter first: it is a bottleneck
KINDS = (
    (CompacterConfig, CompacterModel, TaskRoutedCompacterLayer),
    (ParallelAdapterConfig, ParallelAdapterModel, TaskRoutedParallelLayer),
    (object, BottleneckModel, TaskRoutedBottleneckLayer),
)


def _kind(config: AdapterControllerConfig):
    return next((model, layer) for config_cls, model, layer in KINDS if isinstance(config.adapter, config_cls))


class AdapterControllerModel(BottleneckModel):
    """Task-routed adapters (one per task in every adapted layer, plus an optional LM-head adapter).

    ``model(**batch, task=...)`` and ``model.generate(..., task=...)`` take a task name for the whole batch, a list
    with one name per example, or a LongTensor of task indices. The routing stays on the layers until the next
    forward, so a checkpointed layer recomputed during backward routes the same way.
    """

    prefix: str = "adapter_controller_"
    tuner_layer_cls = TaskRoutedLayer

    def default_targets(self, peft_config: AdapterControllerConfig, positions):
        return _kind(peft_config)[0].default_targets(peft_config.adapter, positions)

    def _head_name(self) -> str:
        if "_head_name_cache" not in self.__dict__:
            self.__dict__["_head_name_cache"] = output_embeddings_name(self.model)
        return self.__dict__["_head_name_cache"]

    def _check_target_module_exists(self, peft_config: AdapterControllerConfig, key: str):
        if peft_config.output_adapter is not None and key == self._head_name():
            return True
        return check_target_module_exists(peft_config, key)

    def layer_class(self, peft_config: AdapterControllerConfig, current_key: str) -> type:
        if peft_config.output_adapter is not None and current_key == self._head_name():
            return TaskRoutedOutputLayer
        return _kind(peft_config)[1]

    def layer_kwargs(self, peft_config: AdapterControllerConfig, adapter_name: str, current_key: str) -> dict:
        if self.layer_class(peft_config, current_key) is TaskRoutedOutputLayer:
            return {}
        if isinstance(peft_config.adapter, ParallelAdapterConfig):
            return input_source_kwargs(self.model, peft_config.adapter, current_key)
        if isinstance(peft_config.adapter, CompacterConfig):
            return shared_rule_kwargs(self, peft_config.adapter, adapter_name)
        return {}

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        # per-task modules sit one level below the adapter name (`...down.<adapter>.<task index>.weight`)
        return re.sub(rf"(\.{re.escape(cls.prefix)}[^.]+)\.{re.escape(adapter_name)}(?=\.|$)", r"\1", key)

    def _unload_and_optionally_merge(self, *args, **kwargs):
        detach_input_sources(self.model)
        return super()._unload_and_optionally_merge(*args, **kwargs)

    # routing
    def route(self, task) -> None:
        """Set the per-example task routing of every active controller adapter on every layer."""
        layers = list(self.tuner_layers())
        if task is None and all(layer.disable_adapters for layer in layers):
            routings = {}  # adapters off (e.g. `with model.disable_adapter()`): no task needed
        else:
            routings = {
                name: routing_for(self.peft_config[name], task)
                for name in self.active_adapters
                if isinstance(self.peft_config.get(name), AdapterControllerConfig)
            }
        for layer in layers:
            layer.task_routing.clear()
            layer.task_routing.update(routings)

    def forward(self, *args, task=None, **kwargs):
        self.route(task)
        return self.model(*args, **kwargs)

    def generate(self, *args, task=None, **kwargs):
        self.route(task)  # pinned for every step of the generation
        return self.model.generate(*args, **kwargs)

    @contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs):
        if kwargs.get("adapter_names") is not None:
            raise ValueError("The adapter controller routes examples with `task=...`, not `adapter_names`.")
        yield

    def add_task(self, task: str, adapter_name: str = "default") -> None:
        """Add a task to a (trained) controller: new zero-initialised adapters; existing tasks are unchanged."""
        config = self.peft_config[adapter_name].with_task(task)
        self.peft_config[adapter_name] = config
        for key, layer in self.model.named_modules():
            if isinstance(layer, TaskRoutedLayer) and adapter_name in layer.adapter_down:
                kwargs = self.layer_kwargs(config, adapter_name, key)
                kwargs.pop("input_source", None)  # the input tap exists already
                kwargs["register_shared_rule"] = False
                layer.add_task(adapter_name, config, **kwargs)
