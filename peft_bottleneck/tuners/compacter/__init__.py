from ...registration import register_tuner
from .config import CompacterConfig
from .layer import CompacterLayer
from .model import CompacterModel

register_tuner("compacter", CompacterConfig, CompacterModel)

__all__ = ["CompacterConfig", "CompacterLayer", "CompacterModel"]
