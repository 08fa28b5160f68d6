"""Bottleneck adapters for Hugging Face PEFT.

``import peft_bottleneck`` registers the tuner types with PEFT; after that ``get_peft_model``,
``PeftModel.from_pretrained``, ``AutoPeftModelFor*`` and transformers' ``load_adapter`` know them.
"""

from .activations import ALLOWED_NON_LINEARITIES
from .importance import (
    AdapterDropCallback,
    LayerImportanceCallback,
    calibrate,
    compression_plan,
    heal,
    set_adapter_drop,
)
from .pruning import find_layer_stacks, prune_layers
from .routing import BASE_ROUTE, Routing
from .tuners import (
    AdapterControllerConfig,
    AdapterControllerModel,
    TaskCollator,
    TaskMaskedLoss,
    AdapterConfigBase,
    BottleneckConfig,
    BottleneckLayer,
    BottleneckModel,
    CompacterConfig,
    CompacterLayer,
    CompacterModel,
    OutputAdapterConfig,
    OutputAdapterLayer,
    OutputAdapterModel,
    ParallelAdapterConfig,
    ParallelAdapterLayer,
    ParallelAdapterModel,
)

__version__ = "0.1.0"

__all__ = [
    "AdapterControllerConfig",
    "AdapterControllerModel",
    "TaskCollator",
    "TaskMaskedLoss",
    "ALLOWED_NON_LINEARITIES",
    "BASE_ROUTE",
    "AdapterConfigBase",
    "BottleneckConfig",
    "BottleneckLayer",
    "BottleneckModel",
    "CompacterConfig",
    "CompacterLayer",
    "CompacterModel",
    "OutputAdapterConfig",
    "OutputAdapterLayer",
    "OutputAdapterModel",
    "ParallelAdapterConfig",
    "ParallelAdapterLayer",
    "ParallelAdapterModel",
    "Routing",
    "AdapterDropCallback",
    "LayerImportanceCallback",
    "calibrate",
    "compression_plan",
    "find_layer_stacks",
    "heal",
    "set_adapter_drop",
    "prune_layers",
]
