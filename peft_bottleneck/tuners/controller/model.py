from __future__ import annotations

from peft.tuners.tuners_utils import check_target_module_exists

from ...target_modules import output_embeddings_name
from ..base.layer import grow_routes
from ..base.model import AdapterTuner
from .config import AdapterControllerConfig
from .layer import ControllerLayer, ControllerOutputLayer


class AdapterControllerModel(AdapterTuner):
    """Task-routed adapters (one route per task in every adapted layer, plus an optional LM-head adapter).

    ``model(**batch, task=...)`` and ``model.generate(..., task=...)`` take a task name for the whole batch, a list
    with one name per example, or a LongTensor of task indices.
    """

    prefix: str = "adapter_controller_"
    tuner_layer_cls = ControllerLayer

    @staticmethod
    def adapter_config(peft_config: AdapterControllerConfig):
        return peft_config.adapter

    def _head_name(self) -> str:
        if "_head_name_cache" not in self.__dict__:
            self.__dict__["_head_name_cache"] = output_embeddings_name(self.model)
        return self.__dict__["_head_name_cache"]

    def _is_head(self, peft_config, key: str) -> bool:
        return peft_config.output_adapter is not None and key == self._head_name()

    def _check_target_module_exists(self, peft_config: AdapterControllerConfig, key: str):
        if self._is_head(peft_config, key):
            return True
        return super()._check_target_module_exists(peft_config, key)

    def layer_class(self, peft_config, current_key: str) -> type:
        return ControllerOutputLayer if self._is_head(peft_config, current_key) else ControllerLayer

    def layer_kwargs(self, peft_config, adapter_name: str, current_key: str) -> dict:
        if self._is_head(peft_config, current_key):
            return {}
        return super().layer_kwargs(peft_config, adapter_name, current_key)

    def _attach_context(self, context, peft_config, current_key: str) -> None:
        if not self._is_head(peft_config, current_key):
            super()._attach_context(context, peft_config, current_key)

    def add_task(self, task: str, adapter_name: str = "default") -> None:
        """Add a task to a (trained) controller: fresh, identity-initialised routes; existing tasks are unchanged."""
        config = self.peft_config[adapter_name].with_task(task)
        for layer in self.tuner_layers():
            settings = layer.settings.get(adapter_name)
            if settings is not None and settings.routes > 1:
                grow_routes(layer, adapter_name, config, 1, tuple(config.tasks))
        self.peft_config[adapter_name] = config
