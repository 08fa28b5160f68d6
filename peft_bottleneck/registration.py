"""Make our tuner types real members of PEFT's ``PeftType`` and register them through PEFT's own API.

``PeftType`` is a closed enum; ``aenum.extend_enum`` adds a member in place, so every ``PeftType.X`` lookup in PEFT
and transformers (which lower-cases ``peft_type.value`` to find adapter keys) sees it. Both steps are idempotent:
importing the package twice, or reloading it, changes nothing.
"""

from __future__ import annotations

from aenum import extend_enum
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import PeftType, register_peft_method


def peft_type(name: str) -> PeftType:
    """The ``PeftType`` member called ``name`` (upper case), created on first use."""
    if name not in PeftType.__members__:
        extend_enum(PeftType, name, name)
    return PeftType[name]


def register_tuner(name: str, config_cls, model_cls) -> None:
    """Register a tuner type under ``name`` (lower case); its prefix is ``name + '_'``."""
    member = peft_type(name.upper())
    if member in PEFT_TYPE_TO_CONFIG_MAPPING:
        # a second registration (module reload): point PEFT at the current classes instead of failing
        PEFT_TYPE_TO_CONFIG_MAPPING[member] = config_cls
        PEFT_TYPE_TO_TUNER_MAPPING[member] = model_cls
        return
    register_peft_method(name=name, config_cls=config_cls, model_cls=model_cls, prefix=f"{name}_")
