from ...registration import register_tuner
from .config import AdapterConfigBase, BottleneckConfig
from .layer import BottleneckLayer
from .model import BottleneckModel

register_tuner("bottleneck", BottleneckConfig, BottleneckModel)

__all__ = ["AdapterConfigBase", "BottleneckConfig", "BottleneckLayer", "BottleneckModel"]
