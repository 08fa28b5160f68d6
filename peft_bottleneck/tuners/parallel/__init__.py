from ..base.kinds import register_adapter_type
from ..bottleneck.layer import LinearKind
from .config import ParallelAdapterConfig
from .layer import ParallelAdapterLayer
from .model import ParallelAdapterModel

register_adapter_type("parallel_adapter", ParallelAdapterConfig, ParallelAdapterModel, LinearKind)

__all__ = ["ParallelAdapterConfig", "ParallelAdapterLayer", "ParallelAdapterModel"]
