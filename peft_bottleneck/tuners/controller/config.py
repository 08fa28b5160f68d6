from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Optional, Union

from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from peft.utils import PeftType

from ...registration import peft_type
from ..base.config import AdapterConfigBase, TargetingConfig, check_bool
from ..base.kinds import kind_of, registered_configs
from ..bottleneck.config import BottleneckConfig
from ..output_adapter.config import OutputAdapterConfig

TARGETING_FIELDS = ("target_modules", "exclude_modules", "layers_to_transform", "layers_pattern", "leave_out")


def _as_config(value: Any, field_name: str, loaded: bool) -> Optional[AdapterConfigBase]:
    """A nested adapter config, also from the dict that adapter_config.json holds."""
    if value is None or isinstance(value, AdapterConfigBase):
        return value
    if isinstance(value, dict) and "peft_type" in value:
        try:
            config_cls = PEFT_TYPE_TO_CONFIG_MAPPING[PeftType(value["peft_type"])]
        except (ValueError, KeyError):
            config_cls = None
        if config_cls is None or not issubclass(config_cls, AdapterConfigBase):
            raise ValueError(f"`{field_name}` names an unknown adapter type {value['peft_type']!r}; known: "
                             f"{sorted(c.__name__ for c in registered_configs())}.")
        known = config_cls.__dataclass_fields__
        kwargs = {k: v for k, v in value.items() if k in known and k != "peft_type"}
        if loaded and "format_version" not in kwargs:
            kwargs["format_version"] = 1  # nested in a file of peft-bottleneck 0.1.0
        return config_cls(**kwargs)
    raise TypeError(
        f"`{field_name}` must be an adapter config ({', '.join(c.__name__ for c in registered_configs())}) or its "
        f"dict, got {value!r}."
    )


@dataclass
class AdapterControllerConfig(TargetingConfig):
    """One adapter per task, chosen per example inside a batch (VIP5 / hyperformer's AdapterController).

    The controller is one adapter whose every adapted layer keeps one route per task: ``task=`` (a name, one name
    per example, or a LongTensor of indices) picks each example's route, exactly as ``adapter_names=`` picks each
    example's adapter; both build the same ``Routing``. Its kind is ``adapter`` (any registered adapter config:
    bottleneck, parallel, Compacter, ...; its placement applies). With ``output_adapter`` the LM head gets an output
    adapter too (per task or shared), so the VIP5 combination is one model and one saved adapter.
    """

    tasks: list[str] = field(
        default=None, metadata={"help": "The task names, in index order (task=LongTensor indexes this list)."}
    )
    adapter: Union[AdapterConfigBase, dict, None] = field(
        default=None,
        metadata={
            "help": "The adapter every task gets: any adapter config of this package (default: BottleneckConfig, "
            "Houlsby). Its placement applies; set the targeting fields (target_modules, ...) here, not on it."
        },
    )
    use_single_adapter: bool = field(
        default=False, metadata={"help": "Share one adapter across all tasks (VIP5's switch); routing is then a no-op."}
    )
    default_task: Optional[str] = field(
        default=None, metadata={"help": "Task used when a forward passes no `task`; without it that is an error."}
    )
    output_adapter: Union[OutputAdapterConfig, dict, None] = field(
        default=None, metadata={"help": "An OutputAdapterConfig to add a parallel adapter on the LM head as well."}
    )
    output_adapter_per_task: bool = field(
        default=True, metadata={"help": "Route the LM-head adapter by task too (False: one shared head adapter)."}
    )

    def __post_init__(self):
        loaded = self.peft_version is not None
        super().__post_init__()
        self.peft_type = peft_type("ADAPTER_CONTROLLER")
        if not self.tasks or not isinstance(self.tasks, (list, tuple)) or not all(
            isinstance(t, str) and t for t in self.tasks
        ):
            raise ValueError(f"`tasks` must be a non-empty list of task names, got {self.tasks!r}.")
        self.tasks = list(self.tasks)
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"`tasks` must be unique, got {self.tasks!r}.")
        check_bool(self, "use_single_adapter")
        check_bool(self, "output_adapter_per_task")
        if self.default_task is not None and self.default_task not in self.tasks:
            raise ValueError(f"`default_task` must be one of {self.tasks}, got {self.default_task!r}.")
        self.adapter = _as_config(self.adapter, "adapter", loaded) or BottleneckConfig()
        kind_of(self.adapter)  # a registered adapter type
        if isinstance(self.adapter, OutputAdapterConfig):
            raise ValueError("`adapter` is the per-layer adapter; pass an OutputAdapterConfig as `output_adapter`.")
        if isinstance(self.adapter, AdapterControllerConfig):
            raise ValueError("`adapter` cannot be another controller.")
        for name in TARGETING_FIELDS:
            if getattr(self.adapter, name):
                raise ValueError(f"Set `{name}` on AdapterControllerConfig, not on its `adapter` config.")
        self.output_adapter = _as_config(self.output_adapter, "output_adapter", loaded)
        if self.output_adapter is not None and not isinstance(self.output_adapter, OutputAdapterConfig):
            raise ValueError(f"`output_adapter` must be an OutputAdapterConfig, got {type(self.output_adapter).__name__}.")

    def to_dict(self):
        # nested configs as plain JSON-able dicts (PEFT converts only top-level sets)
        out = super().to_dict()
        for name in ("adapter", "output_adapter"):
            nested = getattr(self, name)
            if nested is not None:
                out[name] = {k: (sorted(v) if isinstance(v, set) else v) for k, v in nested.to_dict().items()}
                out[name]["peft_type"] = nested.peft_type.value
        return out

    def routed_task_count(self, for_output_adapter: bool = False) -> int:
        if self.use_single_adapter or (for_output_adapter and not self.output_adapter_per_task):
            return 1
        return len(self.tasks)

    def with_task(self, task: str) -> AdapterControllerConfig:
        if not isinstance(task, str) or not task:
            raise ValueError(f"A task name must be a non-empty string, got {task!r}.")
        if task in self.tasks:
            raise ValueError(f"Task {task!r} exists already; tasks: {self.tasks}.")
        return replace(self, tasks=[*self.tasks, task])
