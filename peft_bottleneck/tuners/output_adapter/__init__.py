from ..base.kinds import register_adapter_type
from ..bottleneck.layer import LinearKind
from .config import OUTPUT_EMBEDDINGS, OutputAdapterConfig
from .layer import OutputAdapterLayer
from .model import OutputAdapterModel

register_adapter_type("output_adapter", OutputAdapterConfig, OutputAdapterModel, LinearKind)

__all__ = ["OUTPUT_EMBEDDINGS", "OutputAdapterConfig", "OutputAdapterLayer", "OutputAdapterModel"]
