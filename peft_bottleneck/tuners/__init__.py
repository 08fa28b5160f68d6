from .bottleneck import AdapterConfigBase, BottleneckConfig, BottleneckLayer, BottleneckModel
from .compacter import CompacterConfig, CompacterLayer, CompacterModel
from .parallel import ParallelAdapterConfig, ParallelAdapterLayer, ParallelAdapterModel

__all__ = [
    "AdapterConfigBase",
    "BottleneckConfig",
    "BottleneckLayer",
    "BottleneckModel",
    "CompacterConfig",
    "CompacterLayer",
    "CompacterModel",
    "ParallelAdapterConfig",
    "ParallelAdapterLayer",
    "ParallelAdapterModel",
]
