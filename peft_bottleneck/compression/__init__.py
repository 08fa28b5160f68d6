"""The compression wing: layer importance, calibration, pruning and its layer map, AdapterDrop, healing, reports.

Built on the tuners and never imported by them: the layer-map check on new adapters is registered here.
"""

from ..tuners.base.model import NEW_ADAPTER_CHECKS
from .adapter_drop import AdapterDropCallback, set_adapter_drop
from .calibration import calibrate, greedy_scores, least_important
from .healing import compression_plan, heal
from .importance import CALIBRATION_METHODS, METHODS, TRAINING_METHODS, LayerImportanceCallback, LayerScorer
from .layer_map import check_layer_map, model_layer_map
from .pruning import prune_layers
from .report import write_report
from .stacks import LayerStack, choose_stack, find_layer_stacks

if check_layer_map not in NEW_ADAPTER_CHECKS:
    NEW_ADAPTER_CHECKS.append(check_layer_map)

__all__ = [
    "AdapterDropCallback",
    "CALIBRATION_METHODS",
    "LayerImportanceCallback",
    "LayerScorer",
    "LayerStack",
    "METHODS",
    "TRAINING_METHODS",
    "calibrate",
    "check_layer_map",
    "choose_stack",
    "compression_plan",
    "find_layer_stacks",
    "greedy_scores",
    "heal",
    "least_important",
    "model_layer_map",
    "prune_layers",
    "set_adapter_drop",
    "write_report",
]
