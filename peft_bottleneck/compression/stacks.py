"""The transformer layer stacks of a model, and the one rule that picks one of them.

An encoder or a decoder has one stack; an encoder-decoder has two, and the caller must name the one meant (never a
silent pick). Scoring, calibration, AdapterDrop and pruning all choose their stack with ``choose_stack``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

# config attribute holding each stack's layer count: (stack role, model types) -> attribute
_ENCODER_DECODER_COUNTS = {
    "t5": {"encoder": "num_layers", "decoder": "num_decoder_layers"},
    "mt5": {"encoder": "num_layers", "decoder": "num_decoder_layers"},
    "bart": {"encoder": "encoder_layers", "decoder": "decoder_layers"},
    "mbart": {"encoder": "encoder_layers", "decoder": "decoder_layers"},
}
_COUNT_ATTRIBUTES = ("num_hidden_layers", "n_layer", "n_layers", "num_layers")


@dataclass
class LayerStack:
    """One list of transformer layers: its module path, the list, and the config attribute counting it."""

    path: str
    layers: nn.ModuleList
    count_attribute: str


def _unwrap(model):
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if get_base_model is not None else model


def _count_attribute(config, path: str) -> Optional[str]:
    roles = _ENCODER_DECODER_COUNTS.get(getattr(config, "model_type", None))
    if roles:
        role = "decoder" if "decoder" in path.split(".") else "encoder"
        return roles[role]
    return next((name for name in _COUNT_ATTRIBUTES if isinstance(getattr(config, name, None), int)), None)


def find_layer_stacks(model) -> list[LayerStack]:
    """The transformer layer lists of ``model`` (one for encoders and decoders, two for encoder-decoders)."""
    base = _unwrap(model)
    config = base.config
    inside_tuners = {name for name, module in base.named_modules() if isinstance(module, BaseTunerLayer)}
    stacks = []
    for path, module in base.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if any(path == t or path.startswith(t + ".") for t in inside_tuners):
            continue  # adapters' own per-task lists
        if len({type(layer) for layer in module}) != 1:
            continue
        attribute = _count_attribute(config, path)
        if attribute is not None and getattr(config, attribute) == len(module):
            if not any(path.startswith(s.path + ".") for s in stacks):
                stacks.append(LayerStack(path, module, attribute))
    if not stacks:
        raise ValueError(f"Found no transformer layer list in {type(base).__name__} matching its config's layer count.")
    return stacks



def choose_stack(model, stack: Optional[str] = None) -> LayerStack:
    """The stack named by ``stack`` (its path or a suffix of it), or the only one; several and no name: an error."""
    stacks = find_layer_stacks(model)
    if stack is None:
        if len(stacks) > 1:
            raise ValueError(f"{type(_unwrap(model)).__name__} has several layer stacks {[s.path for s in stacks]}: "
                             "pass `stack` to name one.")
        return stacks[0]
    matches = [s for s in stacks if s.path == stack or s.path.endswith("." + stack)]
    if len(matches) != 1:
        raise ValueError(f"`stack`={stack!r} must name one of {[s.path for s in stacks]}.")
    return matches[0]
