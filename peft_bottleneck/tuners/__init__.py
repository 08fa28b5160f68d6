from .bottleneck import AdapterConfigBase, BottleneckConfig, BottleneckLayer, BottleneckModel
from .compacter import CompacterConfig, CompacterLayer, CompacterModel
from .controller import AdapterControllerConfig, AdapterControllerModel, TaskCollator, TaskMaskedLoss
from .output_adapter import OutputAdapterConfig, OutputAdapterLayer, OutputAdapterModel
from .parallel import ParallelAdapterConfig, ParallelAdapterLayer, ParallelAdapterModel

__all__ = [
    "AdapterControllerConfig",
    "AdapterControllerModel",
    "TaskCollator",
    "TaskMaskedLoss",
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
]
