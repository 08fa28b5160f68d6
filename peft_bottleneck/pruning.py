"""Remove whole transformer layers from a transformers model (plain or wrapped in a PeftModel), cleanly.

``prune_layers(model, drop=[...])`` rebuilds each layer stack from the kept layers, re-indexes every ``layer_idx``
that caches use, updates the layer count and per-layer config lists (``layer_types``), and records which original
layers were kept (``config.pruned_layer_map``). Adapters sit inside the layers, so they go with them; an adapter
saved from a pruned model records the same map, and loading it onto a base pruned differently is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

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
PRUNED_LAYER_MAP = "pruned_layer_map"


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


def _resolve_keep(stack: LayerStack, drop, keep) -> list[int]:
    count = len(stack.layers)
    if (drop is None) == (keep is None):
        raise ValueError("Pass exactly one of `drop` (layer indices to remove) or `keep` (layer indices to keep).")
    chosen = sorted(set(drop if drop is not None else keep))
    bad = [i for i in chosen if not 0 <= i < count]
    if bad:
        raise ValueError(f"Layer indices {bad} are out of range for {stack.path} ({count} layers: 0..{count - 1}).")
    kept = [i for i in range(count) if i not in chosen] if drop is not None else chosen
    if not kept:
        raise ValueError(f"Pruning would remove every layer of {stack.path}; keep at least one.")
    return kept


def _reindex(layer: nn.Module, new_index: int) -> None:
    for module in layer.modules():
        if isinstance(getattr(module, "layer_idx", None), int):
            module.layer_idx = new_index


def _move_t5_position_bias(layers: nn.ModuleList, first_kept: nn.Module) -> None:
    """T5 computes relative position bias in block 0 only; a new block 0 must own it."""
    new_first = layers[0]
    attention = new_first.layer[0].SelfAttention
    if not attention.has_relative_attention_bias:
        attention.has_relative_attention_bias = True
        attention.relative_attention_bias = first_kept.layer[0].SelfAttention.relative_attention_bias


def _check_t5_cache_sizing(config, target: LayerStack, new_count: int) -> None:
    # transformers sizes T5's decoder cache by `num_layers`, the encoder's count
    if getattr(config, "model_type", None) not in ("t5", "mt5") or target.count_attribute != "num_layers":
        return
    if config.num_decoder_layers > new_count:
        raise ValueError(
            f"Pruning T5's encoder to {new_count} layers while its decoder keeps {config.num_decoder_layers} breaks "
            "cached generation (transformers sizes the decoder cache by the encoder's layer count). Prune the "
            "decoder first, to at most as many layers."
        )


def prune_layers(
    model,
    drop: Optional[Sequence[int]] = None,
    keep: Optional[Sequence[int]] = None,
    stack: Union[str, None] = None,
):
    """Remove layers in place and return ``model``. ``stack`` picks a layer list by path (required when a model
    has several, e.g. ``"encoder.block"`` or ``"model.decoder.layers"`` for encoder-decoders)."""
    base = _unwrap(model)
    stacks = find_layer_stacks(base)
    if stack is None:
        if len(stacks) > 1:
            raise ValueError(f"{type(base).__name__} has several layer stacks {[s.path for s in stacks]}: pass `stack`.")
        target = stacks[0]
    else:
        matches = [s for s in stacks if s.path == stack or s.path.endswith("." + stack)]
        if len(matches) != 1:
            raise ValueError(f"`stack`={stack!r} must name one of {[s.path for s in stacks]}.")
        target = matches[0]

    kept = _resolve_keep(target, drop, keep)
    old_count = len(target.layers)
    _check_t5_cache_sizing(base.config, target, len(kept))
    old_first = target.layers[0]
    new_layers = nn.ModuleList([target.layers[i] for i in kept])
    for new_index, layer in enumerate(new_layers):
        _reindex(layer, new_index)
    parent_path, _, name = target.path.rpartition(".")
    parent = base.get_submodule(parent_path) if parent_path else base
    setattr(parent, name, new_layers)
    if getattr(base.config, "model_type", None) in ("t5", "mt5") and kept[0] != 0:
        _move_t5_position_bias(new_layers, old_first)

    config = base.config
    setattr(config, target.count_attribute, len(kept))
    for key, value in list(vars(config).items()):  # per-layer lists such as `layer_types`
        if key != PRUNED_LAYER_MAP and isinstance(value, (list, tuple)) and len(value) == old_count:
            setattr(config, key, type(value)(value[i] for i in kept))
    layer_map = dict(getattr(config, PRUNED_LAYER_MAP, None) or {})
    previous = layer_map.get(target.path, list(range(old_count)))
    layer_map[target.path] = [previous[i] for i in kept]
    setattr(config, PRUNED_LAYER_MAP, layer_map)

    for peft_config in (getattr(model, "peft_config", None) or {}).values():
        if hasattr(peft_config, "layer_map"):
            peft_config.layer_map = dict(layer_map)
    from .tuners.compacter.layer import rehome_shared_rules  # here: the tuners import this module

    rehome_shared_rules(base)
    return model


def model_layer_map(model) -> dict:
    """``{stack path: kept original indices}`` of a pruned model; ``{}`` for an unpruned one."""
    config = getattr(_unwrap(model), "config", None)
    return dict(getattr(config, PRUNED_LAYER_MAP, None) or {})


def check_layer_map(peft_config, model) -> None:
    """Record the model's layer map on a new adapter config, or refuse a saved adapter whose map differs.

    ``layer_map`` None means "not recorded yet" (a fresh config): it takes the model's map. A saved adapter carries
    ``{}`` (unpruned) or its model's map, which must equal the base model's.
    """
    current = model_layer_map(model)
    if peft_config.layer_map is None:
        peft_config.layer_map = current
        return
    if dict(peft_config.layer_map) == current:
        return
    raise ValueError(
        f"This adapter was saved from a model with layer map {peft_config.layer_map or 'unpruned'}, but the base "
        f"model has {current or 'all its layers (unpruned)'}: adapter weights are stored by layer position and would attach to "
        "the wrong layers. Prune the base model the same way first (peft_bottleneck.prune_layers(base, keep=...)), "
        "or load the pruned model saved with save_pretrained."
    )
