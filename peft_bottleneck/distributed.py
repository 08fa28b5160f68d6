"""Sharding a model that holds our adapters with FSDP2 (``torch.distributed.fsdp.fully_shard``).

The frozen base is what is big, so each base ``nn.Linear`` / ``nn.Embedding`` becomes its own FSDP unit, gathered
only while it runs; the root unit gets everything else, every adapter tensor included. Whole-block units (the usual
transformer policy) do not fit: a model-wide adapter tensor (Compacter's shared rule, the hypernetwork, the
controller's task table) lives in the first block that uses it and would still be sharded when a later block reads
it. Modules whose weights are tied (an LM head sharing the embedding) stay in the root unit too: FSDP2 wants tied
parameters in one unit.
"""

from __future__ import annotations

from collections import Counter

from torch import nn

__all__ = ["base_modules_to_shard", "fully_shard_adapter_model"]

SHARDED_BASE_TYPES = (nn.Linear, nn.Embedding)


def base_modules_to_shard(model: nn.Module) -> list[nn.Module]:
    """The modules that get their own FSDP unit: plain linears and embeddings (exact type, so a quantized or adapter
    layer is never split from what it wraps) whose parameters no other module shares."""
    owners = Counter(id(p) for m in model.modules() for p in m.parameters(recurse=False))
    return [m for m in model.modules() if type(m) in SHARDED_BASE_TYPES
            and all(owners[id(p)] == 1 for p in m.parameters(recurse=False))]


def fully_shard_adapter_model(model: nn.Module, mesh=None, **fully_shard_kwargs) -> nn.Module:
    """Apply FSDP2 to ``model`` (a ``PeftModel`` with our adapters) with the unit layout above; ``mesh`` and the
    keyword arguments go to every ``fully_shard`` call. Returns the model, sharded in place."""
    from torch.distributed.fsdp import fully_shard

    for module in base_modules_to_shard(model):
        fully_shard(module, mesh=mesh, **fully_shard_kwargs)
    return fully_shard(model, mesh=mesh, **fully_shard_kwargs)
