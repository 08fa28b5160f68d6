"""Remove whole transformer layers from a transformers model (plain or wrapped in a PeftModel), cleanly.

``prune_layers(model, drop=[...])`` rebuilds each layer stack from the kept layers, re-indexes every ``layer_idx``
that caches use, updates the layer count and per-layer config lists (``layer_types``), and records which original
layers were kept (``config.pruned_layer_map``). Adapters sit inside the layers, so they go with them; an adapter
saved from a pruned model records the same map, and loading it onto a base pruned differently is refused.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

from torch import nn

from ..tuners.compacter.layer import rehome_shared_tensors
from .layer_map import PRUNED_LAYER_MAP
from .stacks import LayerStack, _unwrap, choose_stack


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
    target = choose_stack(base, stack)

    kept = _resolve_keep(target, drop, keep)
    old_count = len(target.layers)
    if kept == list(range(old_count)):
        return model  # nothing to remove: nothing recorded either
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
    rehome_shared_tensors(base)
    return model


