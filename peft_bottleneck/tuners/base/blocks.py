"""Composition blocks: Stack, Average, BatchSplit, Split, Parallel and Fuse, as small value objects (see
``peft_bottleneck.composition`` for what each computes; the adapted layer evaluates them)."""

from __future__ import annotations

import json
from typing import Optional, Sequence, Union

Child = Union[str, "Block"]


class Block:
    """A composition of adapters. Children: adapter names or blocks."""

    allowed: tuple = ()  # the block types a child may be (names are always allowed)

    def __init__(self, *children: Child) -> None:
        if not children:
            raise ValueError(f"{type(self).__name__} needs at least one child (an adapter name or a block).")
        for child in children:
            if isinstance(child, Block):
                if not isinstance(child, self.allowed):
                    raise ValueError(f"{type(self).__name__} cannot hold a {type(child).__name__} (it takes adapter "
                                     f"names and {[c.__name__ for c in self.allowed] or 'no blocks'}): "
                                     f"{child!r} in {type(self).__name__}{children!r}.")
            elif not isinstance(child, str) or not child:
                raise TypeError(f"A child of {type(self).__name__} must be an adapter name or a block, got {child!r}.")
        self.children = tuple(children)

    def leaves(self) -> list[str]:
        out = []
        for child in self.children:
            out += child.leaves() if isinstance(child, Block) else [child]
        return out

    def to_dict(self) -> dict:
        return {"block": type(self).__name__,
                "children": [c.to_dict() if isinstance(c, Block) else c for c in self.children], **self._extra()}

    def _extra(self) -> dict:
        return {}

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self._extra().items())
        return f"{type(self).__name__}({', '.join(map(repr, self.children))}{extra})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Block) and self.to_dict() == other.to_dict()

    def __hash__(self):
        return hash(json.dumps(self.to_dict(), sort_keys=True))


class Stack(Block):
    """Each child reads the previous child's output (MAD-X: a language adapter under a task adapter)."""


class Average(Block):
    def __init__(self, *children: Child, weights: Optional[Sequence[float]] = None) -> None:
        super().__init__(*children)
        if weights is None:
            weights = [1.0] * len(children)
        weights = [float(w) for w in weights]
        if len(weights) != len(children) or any(not w >= 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"`weights` must be one non-negative number per child ({len(children)}) with a positive "
                             f"sum, got {weights!r}.")
        total = sum(weights)
        self.weights = tuple(w / total for w in weights)

    def _extra(self) -> dict:
        return {"weights": list(self.weights)}


class BatchSplit(Block):
    def __init__(self, *children: Child, batch_sizes: Sequence[int]) -> None:
        super().__init__(*children)
        sizes = list(batch_sizes)
        if len(sizes) != len(children) or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0
                                                  for b in sizes):
            raise ValueError(f"`batch_sizes` must be one positive integer per child ({len(children)}), got {sizes!r}.")
        self.batch_sizes = tuple(sizes)

    def _extra(self) -> dict:
        return {"batch_sizes": list(self.batch_sizes)}


class Split(Block):
    """Consecutive slices of the sequence to different children (AdapterHub's ``Split``): ``splits`` gives each
    child's number of positions (one int: the same for every child); they must add up to the sequence length."""

    def __init__(self, *children: Child, splits: Union[int, Sequence[int]]) -> None:
        super().__init__(*children)
        sizes = [splits] * len(children) if isinstance(splits, int) and not isinstance(splits, bool) else list(splits)
        if len(sizes) != len(children) or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0
                                                  for s in sizes):
            raise ValueError(f"`splits` must be one positive integer per child ({len(children)}) or one for all, got "
                             f"{splits!r}.")
        self.splits = tuple(sizes)

    def _extra(self) -> dict:
        return {"splits": list(self.splits)}


class Parallel(Block):
    """The batch once per child, outputs side by side (batch n * B)."""


class Fuse(Block):
    """AdapterFusion over the children (adapter names, frozen); its trained weights come from ``add_fusion``."""

    @property
    def name(self) -> str:
        return "fusion_" + "_".join(self.leaves())


# AdapterHub's nesting rules (adapters 1.3), plus Average
Stack.allowed = (Fuse, Parallel, BatchSplit, Split, Average)
Average.allowed = (Stack, BatchSplit)
BatchSplit.allowed = (Stack, Split, Average)
Split.allowed = (Split, Stack, BatchSplit)
Parallel.allowed = (Stack, Average)
Fuse.allowed = ()
BLOCKS = {cls.__name__: cls for cls in (Stack, Average, BatchSplit, Split, Parallel, Fuse)}


def from_dict(spec) -> Optional[Block]:
    if spec is None or isinstance(spec, str):
        return spec
    cls = BLOCKS.get(spec.get("block")) if isinstance(spec, dict) else None
    if cls is None:
        raise ValueError(f"Not a composition block: {spec!r} (known: {sorted(BLOCKS)}).")
    children = [from_dict(c) for c in spec["children"]]
    extra = {k: spec[k] for k in ("weights", "batch_sizes", "splits") if k in spec}
    return cls(*children, **extra)


def parallel_copies(block) -> int:
    """How many copies of the batch the model's inputs need (a Parallel at the top, or inside the top Stack)."""
    if isinstance(block, Parallel):
        return len(block.children)
    if isinstance(block, Stack):
        return max([parallel_copies(c) for c in block.children if isinstance(c, Block)] or [1])
    return 1


