from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Optional, Union

from peft.config import PeftConfig
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from peft.utils import PeftType

from ...registration import peft_type
from ..bottleneck.config import AdapterConfigBase, BottleneckConfig
from ..output_adapter.config import OutputAdapterConfig

TARGETING_FIELDS = ("target_modules", "exclude_modules", "layers_to_transform", "layers_pattern")


def _as_config(value: Any, field_name: str) -> Optional[AdapterConfigBase]:
    """A nested adapter config, also from the dict that adapter_config.json holds."""
    if value is None or isinstance(value, AdapterConfigBase):
        return value
    if isinstance(value, dict) and "peft_type" in value:
        config_cls = PEFT_TYPE_TO_CONFIG_MAPPING[PeftType(value["peft_type"])]
        known = config_cls.__dataclass_fields__
        return config_cls(**{k: v for k, v in value.items() if k in known and k != "peft_type"})
    raise ValueError(
        f"`{field_name}` must be a BottleneckConfig, ParallelAdapterConfig or CompacterConfig (or its dict), "
        f"got {value!r}."
    )


@dataclass
class AdapterControllerConfig(PeftConfig):
    """One adapter per task, chosen per example inside a batch (VIP5 / hyperformer's AdapterController).

    Every adapted layer holds one adapter of the kind ``adapter`` describes per task (bottleneck, parallel or
    Compacter, at that config's placement); ``model(**batch, task=...)`` routes each example to its task's adapter
    with one batched gather-matmul per layer. With ``output_adapter`` the LM head gets an output adapter too (per task
    or shared), so the VIP5 combination is one model and one saved adapter.
    """

    tasks: list[str] = field(
        default=None, metadata={"help": "The task names, in index order (task=LongTensor indexes this list)."}
    )
    adapter: Union[AdapterConfigBase, dict, None] = field(
        default=None,
        metadata={
            "help": "The adapter every task gets: a BottleneckConfig (default, Houlsby), ParallelAdapterConfig or "
            "CompacterConfig. Its placement applies; set targeting fields (target_modules, ...) here, not on it."
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
    target_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Modules to adapt; default: the positions of `adapter`'s placement."}
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Modules never to adapt (list of names/suffixes, or one regex)."}
    )
    layers_to_transform: Optional[Union[list[int], int]] = field(
        default=None, metadata={"help": "Adapt only the layers with these indices."}
    )
    layers_pattern: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Name of the layer list used with layers_to_transform."}
    )
    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "Modules besides the adapters to train and save (e.g. a classifier)."}
    )
    layer_map: Optional[dict] = field(
        default=None,
        metadata={"help": "Set automatically: the model's kept layers per stack ({} if unpruned); see BottleneckConfig."},
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = peft_type("ADAPTER_CONTROLLER")
        if not self.tasks or not isinstance(self.tasks, (list, tuple)) or not all(isinstance(t, str) for t in self.tasks):
            raise ValueError(f"`tasks` must be a non-empty list of task names, got {self.tasks!r}.")
        self.tasks = list(self.tasks)
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"`tasks` must be unique, got {self.tasks!r}.")
        if self.default_task is not None and self.default_task not in self.tasks:
            raise ValueError(f"`default_task` must be one of {self.tasks}, got {self.default_task!r}.")
        self.adapter = _as_config(self.adapter, "adapter") or BottleneckConfig()
        if isinstance(self.adapter, OutputAdapterConfig):
            raise ValueError("`adapter` is the per-layer adapter; pass an OutputAdapterConfig as `output_adapter`.")
        for name in TARGETING_FIELDS:
            if getattr(self.adapter, name) is not None:
                raise ValueError(f"Set `{name}` on AdapterControllerConfig, not on its `adapter` config.")
        self.output_adapter = _as_config(self.output_adapter, "output_adapter")
        if self.output_adapter is not None and not isinstance(self.output_adapter, OutputAdapterConfig):
            raise ValueError(f"`output_adapter` must be an OutputAdapterConfig, got {type(self.output_adapter).__name__}.")
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)

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
        if task in self.tasks:
            raise ValueError(f"Task {task!r} exists already; tasks: {self.tasks}.")
        return replace(self, tasks=[*self.tasks, task])
