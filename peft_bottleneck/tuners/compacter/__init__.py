from ..base.kinds import register_adapter_type
from .config import CompacterConfig
from .layer import CompacterLayer, PHMKind
from .model import CompacterModel

register_adapter_type("compacter", CompacterConfig, CompacterModel, PHMKind)

__all__ = ["CompacterConfig", "CompacterLayer", "CompacterModel", "PHMKind"]
