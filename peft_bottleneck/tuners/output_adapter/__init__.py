from ...registration import register_tuner
from .config import OUTPUT_EMBEDDINGS, OutputAdapterConfig
from .layer import OutputAdapterLayer
from .model import OutputAdapterModel

register_tuner("output_adapter", OutputAdapterConfig, OutputAdapterModel)

__all__ = ["OUTPUT_EMBEDDINGS", "OutputAdapterConfig", "OutputAdapterLayer", "OutputAdapterModel"]
