"""The adapter core shared by every tuner type: config fields, the adapted layer, the tuner, routing, kinds."""

from .config import FORMAT_VERSION, AdapterConfigBase, TargetingConfig
from .kinds import AdapterKind, Projections, Sizes, kind_of, register_adapter_type
from .layer import MERGE_ERROR, AdapterLayer, AdapterSettings, BlockContext
from .model import AdapterTuner, check_adapter_name
from .routing import BASE_ROUTE, RouteTable, Routing, RoutingState

__all__ = [
    "BASE_ROUTE",
    "FORMAT_VERSION",
    "MERGE_ERROR",
    "AdapterConfigBase",
    "AdapterKind",
    "AdapterLayer",
    "AdapterSettings",
    "AdapterTuner",
    "BlockContext",
    "Projections",
    "RouteTable",
    "Routing",
    "RoutingState",
    "Sizes",
    "TargetingConfig",
    "check_adapter_name",
    "kind_of",
    "register_adapter_type",
]
