from .bottleneck import AdapterConfigBase, BottleneckConfig, BottleneckLayer, BottleneckModel
from .parallel import ParallelAdapterConfig, ParallelAdapterLayer, ParallelAdapterModel

__all__ = [
    "AdapterConfigBase",
    "BottleneckConfig",
    "BottleneckLayer",
    "BottleneckModel",
    "ParallelAdapterConfig",
    "ParallelAdapterLayer",
    "ParallelAdapterModel",
]
