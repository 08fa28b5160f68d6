from ...registration import register_tuner
from .config import ParallelAdapterConfig
from .layer import ParallelAdapterLayer
from .model import ParallelAdapterModel

register_tuner("parallel_adapter", ParallelAdapterConfig, ParallelAdapterModel)

__all__ = ["ParallelAdapterConfig", "ParallelAdapterLayer", "ParallelAdapterModel"]
