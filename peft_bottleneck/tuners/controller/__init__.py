from ...registration import register_tuner
from .collator import TaskCollator
from .config import AdapterControllerConfig
from .layer import TaskRoutedLayer, routing_for
from .losses import TaskMaskedLoss
from .model import AdapterControllerModel

register_tuner("adapter_controller", AdapterControllerConfig, AdapterControllerModel)

__all__ = ["AdapterControllerConfig", "AdapterControllerModel", "TaskCollator", "TaskMaskedLoss", "TaskRoutedLayer", "routing_for"]
