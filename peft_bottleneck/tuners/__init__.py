"""Tuner types: one folder each (config, layer, model), all built on ``base``. Importing a folder registers it."""

from .base import AdapterConfigBase, AdapterLayer, AdapterTuner, TargetingConfig
from .bottleneck import BottleneckConfig, BottleneckLayer, BottleneckModel
from .compacter import CompacterConfig, CompacterLayer, CompacterModel
from .controller import AdapterControllerConfig, AdapterControllerModel
from .hyper import HyperAdapterConfig, HyperAdapterModel
from .low_rank import LowRankConfig, LowRankModel
from .output_adapter import OutputAdapterConfig, OutputAdapterLayer, OutputAdapterModel
from .parallel import ParallelAdapterConfig, ParallelAdapterLayer, ParallelAdapterModel

__all__ = [
    "AdapterConfigBase",
    "AdapterControllerConfig",
    "AdapterControllerModel",
    "AdapterLayer",
    "AdapterTuner",
    "BottleneckConfig",
    "BottleneckLayer",
    "BottleneckModel",
    "CompacterConfig",
    "CompacterLayer",
    "CompacterModel",
    "HyperAdapterConfig",
    "HyperAdapterModel",
    "LowRankConfig",
    "LowRankModel",
    "OutputAdapterConfig",
    "OutputAdapterLayer",
    "OutputAdapterModel",
    "ParallelAdapterConfig",
    "ParallelAdapterLayer",
    "ParallelAdapterModel",
    "TargetingConfig",
]
