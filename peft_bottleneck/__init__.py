"""Bottleneck adapters for Hugging Face PEFT.

``import peft_bottleneck`` registers the tuner types with PEFT; after that ``get_peft_model``,
``PeftModel.from_pretrained``, ``AutoPeftModelFor*`` and transformers' ``load_adapter`` know them.

Layers of the house: ``tuners/base`` (the adapter core: config fields, the adapted layer, routing, the tuner, the
kind registry), one folder per tuner type in ``tuners/``, ``compression/`` (importance, pruning, AdapterDrop),
``multitask/`` (collator, masked loss), and the jobs (``finetune``).
"""

from .activations import ALLOWED_NON_LINEARITIES
from .safety import AdapterLoadError
from .compression import (
    AdapterDropCallback,
    LayerImportanceCallback,
    calibrate,
    compression_plan,
    find_layer_stacks,
    heal,
    prune_layers,
    set_adapter_drop,
)
from .composition import (
    Average,
    BatchSplit,
    Fuse,
    Parallel,
    Split,
    Stack,
    add_fusion,
    compose,
    composing,
    fusion_attention,
    load_composed,
)
from .learning_rates import (
    RECOMMENDED_HEAD_LEARNING_RATE,
    RECOMMENDED_LEARNING_RATES,
    create_adapter_optimizer,
    recommended_learning_rate,
)
from .multitask import TaskCollator, TaskMaskedLoss
from .tuners import (
    AdapterConfigBase,
    AdapterControllerConfig,
    AdapterControllerModel,
    AdapterLayer,
    BottleneckConfig,
    BottleneckLayer,
    BottleneckModel,
    CompacterConfig,
    CompacterLayer,
    CompacterModel,
    HyperAdapterConfig,
    LowRankConfig,
    OutputAdapterConfig,
    OutputAdapterLayer,
    OutputAdapterModel,
    ParallelAdapterConfig,
    ParallelAdapterLayer,
    ParallelAdapterModel,
    TargetingConfig,
)
from .tuners.base import BASE_ROUTE, Routing
from .discovery import DiscoveryError
from .averaging import average_adapter
from .presets import PRESET_NAMES, get_config
from .target_modules import AdapterPositions, BlockSite, register_positions
from . import distributed, safety

safety.install()

__version__ = "0.2.0"

__all__ = [
    "AdapterPositions",
    "average_adapter",
    "get_config",
    "PRESET_NAMES",
    "BlockSite",
    "DiscoveryError",
    "register_positions",
    "ALLOWED_NON_LINEARITIES",
    "RECOMMENDED_HEAD_LEARNING_RATE",
    "RECOMMENDED_LEARNING_RATES",
    "create_adapter_optimizer",
    "recommended_learning_rate",
    "Average",
    "BatchSplit",
    "Fuse",
    "Parallel",
    "Split",
    "Stack",
    "add_fusion",
    "compose",
    "composing",
    "fusion_attention",
    "load_composed",
    "BASE_ROUTE",
    "AdapterConfigBase",
    "AdapterControllerConfig",
    "AdapterControllerModel",
    "AdapterDropCallback",
    "AdapterLoadError",
    "AdapterLayer",
    "BottleneckConfig",
    "BottleneckLayer",
    "BottleneckModel",
    "CompacterConfig",
    "CompacterLayer",
    "CompacterModel",
    "HyperAdapterConfig",
    "LayerImportanceCallback",
    "LowRankConfig",
    "OutputAdapterConfig",
    "OutputAdapterLayer",
    "OutputAdapterModel",
    "ParallelAdapterConfig",
    "ParallelAdapterLayer",
    "ParallelAdapterModel",
    "Routing",
    "TargetingConfig",
    "TaskCollator",
    "TaskMaskedLoss",
    "calibrate",
    "compression_plan",
    "find_layer_stacks",
    "heal",
    "prune_layers",
    "set_adapter_drop",
]
