"""The layer map: which original layers of each stack a pruned model kept, recorded on adapters and checked on load.

Adapter weights are stored by layer position, so an adapter made on a pruned model attaches to the wrong layers of a
base pruned differently (or not at all): loading compares the maps and refuses a mismatch.
"""

from __future__ import annotations

PRUNED_LAYER_MAP = "pruned_layer_map"
UNCHECKED = "unchecked"  # a layer_map value: attach by position, whatever the base model's layers


def _unwrap(model):
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if get_base_model is not None else model


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
    if peft_config.layer_map == UNCHECKED:
        return
    if peft_config.layer_map is None:
        if current and getattr(peft_config, "_loaded", False):
            raise ValueError(
                f"This saved adapter records no layer map, but the base model is pruned ({current}): its weights are "
                "stored by layer position and may attach to the wrong layers. Load it onto the model it was made "
                f"for, or pass layer_map={UNCHECKED!r} (e.g. PeftModel.from_pretrained(base, path, "
                f"layer_map={UNCHECKED!r})) if attaching by position is intended."
            )
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
