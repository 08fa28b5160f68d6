from ..base.kinds import register_adapter_type
from .config import HyperAdapterConfig
from .layer import HyperKind, HyperLayer
from .model import HyperAdapterModel

register_adapter_type("hyper_adapter", HyperAdapterConfig, HyperAdapterModel, HyperKind)

__all__ = ["HyperAdapterConfig", "HyperAdapterModel", "HyperKind", "HyperLayer"]
