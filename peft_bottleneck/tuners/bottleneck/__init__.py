from ..base.kinds import register_adapter_type
from .config import BottleneckConfig
from .layer import BottleneckLayer, LinearKind
from .model import BottleneckModel

register_adapter_type("bottleneck", BottleneckConfig, BottleneckModel, LinearKind)

__all__ = ["BottleneckConfig", "BottleneckLayer", "BottleneckModel", "LinearKind"]
