from __future__ import annotations

from ..base.layer import AdapterLayer


class ControllerLayer(AdapterLayer):
    """A module whose controller adapters keep one route per task (any adapter kind)."""

    prefix = "adapter_controller_"
    adapter_kind = "Task-routed"
    for_output_adapter = False

    def kind_config(self, config):
        return config.output_adapter if self.for_output_adapter else config.adapter

    def routes_for(self, config, adapter_name: str):
        count = config.routed_task_count(self.for_output_adapter)
        return count, (tuple(config.tasks) if count > 1 else None)


class ControllerOutputLayer(ControllerLayer):
    """The LM head of a controller with an output adapter (VIP5)."""

    adapter_kind = "Task-routed output"
    for_output_adapter = True

    def width_reference(self, in_features: int) -> int:
        return in_features
