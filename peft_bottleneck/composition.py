"""Composing adapters: Stack, Average, Parallel, BatchSplit and Fuse (AdapterFusion), on the one routing core.

A block is a small value object whose children are adapter names or blocks. ``compose(model, block)`` makes it the
computation of every adapted layer, model-wide like ``set_adapter`` (``compose(model, None)`` goes back to PEFT's
active adapters; several active adapters, ``set_adapter(["a", "b"])``, already mean ``Stack("a", "b")``). For one
call only, safe when several threads share the model: ``model(**batch, composition=block)`` or
``with composing(model, block): ...``. The layer evaluates the tree on the
module's output:

- ``Stack(a, b)``: ``b`` reads ``a``'s output.
- ``Average(a, b, weights=...)``: the weighted mean of the children's outputs (weights normalised, default equal).
- ``BatchSplit(a, b, batch_sizes=[2, 3])``: consecutive slices of the batch to different children; with names only
  it is per-example routing (``adapter_names``) and runs as one batched computation.
- ``Split(a, b, splits=[3, 5])``: consecutive slices of the sequence (positions) to different children, as
  AdapterHub's ``Split``; the splits add up to the sequence length.
- ``Parallel(a, b)``: the batch replicated once per child (at the model's inputs, which gives the outputs
  AdapterHub's replication at the first adapted layer gives) and the outputs side by side, batch ``n * B`` in order;
  each copy runs as a BatchSplit slice.
- ``Fuse(a, b)``: AdapterFusion (Pfeiffer et al. 2021) over frozen adapters: ``h + sum_i softmax_i(q . k_i) v_i``
  with ``q = W_q h``, ``k_i = W_k u_i``, ``v_i = W_v u_i``, ``u_i`` adapter i's scaled output; ``add_fusion`` creates
  the trained fusion (``W_v`` starts as the identity, so a fresh fusion is the average of the children's outputs).
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from peft import PeftConfig, PeftModel

from .tuners.base.blocks import Average, BatchSplit, Block, Fuse, Parallel, Split, Stack, from_dict, parallel_copies


def _tuner(model):
    tuner = getattr(model, "base_model", model)
    if not hasattr(tuner, "routing_state"):
        raise TypeError("compose() takes a PeftModel of peft-bottleneck's adapter types.")
    return tuner


def compose(model, block: Optional[Block]) -> None:
    """Make ``block`` the computation of every adapted layer (None: back to PEFT's active adapters). The block is
    recorded in every adapter's config, so ``save_pretrained`` writes it and ``load_composed`` restores it."""
    tuner = _tuner(model)
    if block is not None:
        if isinstance(block, str):
            block = Stack(block)
        if not isinstance(block, Block):
            raise TypeError(f"compose() takes a block (Stack, Average, Parallel, BatchSplit, Fuse) or None, got "
                            f"{block!r}.")
        missing = [n for n in block.leaves() if n not in tuner.peft_config]
        if missing:
            raise ValueError(f"The composition names adapters the model does not have: {missing}; it has "
                             f"{sorted(tuner.peft_config)}.")
        for fuse in _fuses(block):
            if fuse.name not in tuner.peft_config:
                raise ValueError(f"{fuse!r} has no fusion weights: call add_fusion(model, {fuse!r}) first.")
    tuner.routing_state.composition = block
    for config in tuner.peft_config.values():
        config.composition = None if block is None else block.to_dict()


@contextmanager
def composing(model, block: Block):
    """Compose ``block`` for the calls made inside the ``with`` in this thread / asyncio task only: a server's
    per-request composition. The model-wide composition (``compose``) and other threads' calls are untouched; a
    ``composition=`` keyword on one forward / generate does the same for that call."""
    from .tuners.base.model import _checked_block
    from .tuners.base.routing import CallRoute

    tuner = _tuner(model)
    block = _checked_block(tuner, block)
    for fuse in _fuses(block):
        if fuse.name not in tuner.peft_config:
            raise ValueError(f"{fuse!r} has no fusion weights: call add_fusion(model, {fuse!r}) first.")
    with tuner.routing_state.entered(CallRoute(None, block, depth=0)):
        yield


def _fuses(block) -> list:
    if isinstance(block, Fuse):
        return [block]
    return [f for c in getattr(block, "children", ()) if isinstance(c, Block) for f in _fuses(c)]


def add_fusion(model, fuse: Fuse, *, query_before_ln: bool = False) -> str:
    """Add a trainable AdapterFusion layer over ``fuse``'s adapters at every adapted position, freeze everything
    else, and compose ``fuse``. Returns the fusion's adapter name (saved like any adapter, with the fused names)."""
    tuner = _tuner(model)
    if not isinstance(fuse, Fuse):
        raise TypeError(f"add_fusion() takes a Fuse block, got {fuse!r}.")
    missing = [n for n in fuse.leaves() if n not in tuner.peft_config]
    if missing:
        raise ValueError(f"Fuse names adapters the model does not have: {missing}; it has {sorted(tuner.peft_config)}.")
    first = tuner.peft_config[fuse.leaves()[0]]
    config = type(first)(**{**{f.name: getattr(first, f.name) for f in dataclasses.fields(first)
                               if f.name not in ("peft_type", "composition", "layer_map")}, "fusion_of": fuse.leaves()})
    config.inference_mode = False
    model.add_adapter(fuse.name, config)
    # PEFT's active adapter: only the fusion (and its own modules_to_save copy, e.g. a fresh head) trains; the
    # forward follows the composition
    model.set_adapter(fuse.name)
    compose(model, fuse)
    return fuse.name


def load_composed(base_model, path, **kwargs):
    """Load every adapter saved in ``path`` (the default one at the top, the others in their sub-folders, as
    ``save_pretrained`` writes them) and restore the composition that was active when they were saved: the one call
    that brings a composed model back. Fusions load after the adapters they fuse."""
    path = Path(path)
    entries = [("default", path)] if (path / "adapter_config.json").is_file() else []
    entries += [(p.name, p) for p in sorted(path.iterdir()) if (p / "adapter_config.json").is_file()]
    if not entries:
        raise ValueError(f"{path} holds no saved adapter (no adapter_config.json, nor in a sub-folder).")
    configs = {name: PeftConfig.from_pretrained(str(folder)) for name, folder in entries}
    entries.sort(key=lambda e: getattr(configs[e[0]], "fusion_of", None) is not None)  # fusions last
    (first, folder), rest = entries[0], entries[1:]
    model = PeftModel.from_pretrained(base_model, str(folder), adapter_name=first, **kwargs)
    for name, folder in rest:
        model.load_adapter(str(folder), adapter_name=name)
    spec = next((c.composition for c in configs.values() if getattr(c, "composition", None)), None)
    if spec is not None:
        block = from_dict(spec)
        # a head trained with the composition (modules_to_save) belongs to its fusion, else to its last adapter
        fuses = _fuses(block)
        model.set_adapter(fuses[-1].name if fuses else block.leaves()[-1])
        compose(model, block)
    return model


def fusion_attention(model) -> dict:
    """The fusion layers' mean attention over the fused adapters in the last forward, per adapted module."""
    tuner = _tuner(model)
    return {name: layer.last_fusion_attention for name, layer in tuner.model.named_modules()
            if getattr(layer, "last_fusion_attention", None) is not None}


__all__ = ["Average", "BatchSplit", "Block", "Fuse", "Parallel", "Split", "Stack", "add_fusion", "compose", "composing",
           "from_dict",
           "fusion_attention", "load_composed"]
