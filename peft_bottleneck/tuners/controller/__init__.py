from ...registration import register_tuner
from .config import AdapterControllerConfig
from .layer import ControllerLayer, ControllerOutputLayer
from .model import AdapterControllerModel

# a tuner type, not a kind: its layers take the kind of the nested `adapter` config
register_tuner("adapter_controller", AdapterControllerConfig, AdapterControllerModel)

__all__ = ["AdapterControllerConfig", "AdapterControllerModel", "ControllerLayer", "ControllerOutputLayer"]
