"""Per-example routing: one object says which adapter (and which of its task routes) every example of a batch uses.

``Routing`` is built once per model call, from ``adapter_names=[...]`` (one adapter name per example), from
``task=`` (a task name, one name per example, or a LongTensor of task indices) or both, and reaches every adapted
layer through the model's ``RoutingState``: a ``contextvars.ContextVar`` set by the model's forward / ``generate``
for that call only, so each thread and each asyncio task sees its own call's route and never another's. A
gradient-checkpointed block re-runs during backward inside a copy of the context its forward ran in (the tuner wraps
the checkpoint function), so the re-forward routes as its forward did, in whatever thread autograd runs it. Only the
model-wide composition (``compose(model, block)``) is shared state, as ``set_adapter`` is.

``RouteTable`` keeps a layer's adapter weights stacked for gathering, so a batch that mixes many of the layer's
adapters is one gather and two batched matmuls, with no Python loop over adapters or examples on the tensors.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import contextmanager
from contextvars import ContextVar, copy_context
from dataclasses import dataclass, field
from functools import partial
from typing import Optional

import torch
import torch.nn.functional as F

BASE_ROUTE = "__base__"


@dataclass(frozen=True)
class Routing:
    """Which route every example of a batch takes.

    ``adapters``: the distinct adapter names of the batch (``BASE_ROUTE`` = no adapter) and ``adapter_codes`` the
    position of each example's adapter in it; None when every example uses the active adapters.
    ``task_codes``: each example's task index into ``tasks``; None without task routing.
    ``repeat``: how many consecutive rows a layer may see per example (beam search / ``num_return_sequences``,
    set by ``generate``, which knows the factor); every other batch size is an error.
    """

    adapters: Optional[tuple[str, ...]] = None
    adapter_codes: Optional[torch.Tensor] = None
    tasks: Optional[tuple[str, ...]] = None
    task_codes: Optional[torch.Tensor] = None
    repeat: int = 1
    whole_batch: bool = False  # one task for every row, whatever the batch size

    @property
    def batch_size(self) -> int:
        codes = self.adapter_codes if self.adapter_codes is not None else self.task_codes
        return int(codes.shape[0])  # 1 for a whole-batch task

    def with_repeat(self, factor: int) -> Routing:
        return Routing(self.adapters, self.adapter_codes, self.tasks, self.task_codes, self.repeat * factor,
                       self.whole_batch)

    def check_rows(self, routed: int, rows: int) -> None:
        """A layer's batch of ``rows`` must be the routed examples (or, in generation, each repeated)."""
        if rows != routed and not (self.repeat > 1 and rows == routed * self.repeat):
            sizes = f"{routed}" + (f" (or {routed * self.repeat} in generation)" if self.repeat > 1 else "")
            raise ValueError(
                f"The routing has one entry per example ({sizes}), but a layer received a batch of {rows}: pass "
                "exactly one adapter name / task per example."
            )

    def _rows(self, codes: torch.Tensor, rows: int, device) -> torch.Tensor:
        routed = codes.shape[0]
        self.check_rows(routed, rows)
        expanded = codes if rows == routed else codes.repeat_interleave(self.repeat)
        return expanded.to(device, non_blocking=True)

    def adapter_rows(self, rows: int, device) -> torch.Tensor:
        return self._rows(self.adapter_codes, rows, device)

    def task_rows(self, rows: int, device) -> torch.Tensor:
        if self.whole_batch:
            return self.task_codes.to(device).expand(rows)
        return self._rows(self.task_codes, rows, device)


def _is_int_list(values) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def adapter_codes(adapter_names, available) -> tuple[tuple[str, ...], torch.Tensor]:
    """(distinct names, code per example) for ``adapter_names=[...]``, checked against the model's adapters."""
    if isinstance(adapter_names, str) or not isinstance(adapter_names, Sequence):
        raise TypeError(
            f"`adapter_names` must be a list with one adapter name per example, got {type(adapter_names).__name__}."
        )
    if len(adapter_names) == 0:
        raise ValueError("`adapter_names` is empty: pass one adapter name per example.")
    if not all(isinstance(n, str) for n in adapter_names):
        raise TypeError(f"`adapter_names` must hold adapter names (str), got {list(adapter_names)!r}.")
    available = set(available)
    names = tuple(dict.fromkeys(adapter_names))
    unknown = [n for n in names if n != BASE_ROUTE and n not in available]
    if unknown:
        raise ValueError(
            f"`adapter_names` contains unknown adapter(s) {unknown}; the model has {sorted(available)} "
            f"(or use {BASE_ROUTE!r} for the base model)."
        )
    position = {name: i for i, name in enumerate(names)}
    return names, torch.tensor([position[n] for n in adapter_names], dtype=torch.long)


def task_codes(task, tasks: Sequence[str]) -> torch.Tensor:
    """Task index per example for ``task=`` (a name for the whole batch is expanded by the caller)."""
    tasks = list(tasks)
    if isinstance(task, torch.Tensor):
        if task.dtype in (torch.bool,) or task.is_floating_point() or task.is_complex():
            raise TypeError(f"`task` as a tensor must hold integer task indices, got dtype {task.dtype}.")
        codes = task.reshape(-1).long().cpu()
    elif isinstance(task, (list, tuple)) and task and all(isinstance(t, str) for t in task):
        unknown = sorted({t for t in task if t not in tasks})
        if unknown:
            raise ValueError(f"Unknown task(s) {unknown}; the valid tasks are {tasks}.")
        index = {name: i for i, name in enumerate(tasks)}
        codes = torch.tensor([index[t] for t in task], dtype=torch.long)
    elif isinstance(task, (list, tuple)) and task and _is_int_list(task):
        codes = torch.tensor(task, dtype=torch.long)
    elif isinstance(task, (list, tuple)) and not task:
        raise ValueError("`task` is empty: pass one task per example, or one task name for the whole batch.")
    else:
        raise TypeError(f"`task` must be a task name, a list of names or of indices, or a LongTensor; got {task!r}.")
    if codes.numel() == 0:
        raise ValueError("`task` is empty: pass one task per example, or one task name for the whole batch.")
    low, high = int(codes.min()), int(codes.max())
    if low < 0 or high >= len(tasks):
        raise ValueError(f"Task index out of range: got {low if low < 0 else high}; valid indices are "
                         f"0..{len(tasks) - 1} for the tasks {tasks}.")
    return codes


class GatherScratch:
    """Memory one call's mixed-batch gathers reuse from layer to layer (and from step to step of a ``generate``):
    on CPU a fresh allocation of this size is page-faulted in anew at every layer, which costs more than the
    gather itself. Private to its call, as the call's route is; used only without gradients, where nothing keeps
    a layer's gathered weights once the layer is done."""

    def __init__(self) -> None:
        self.buffers: dict[tuple, torch.Tensor] = {}

    def take(self, key: str, like: torch.Tensor, rows: int) -> torch.Tensor:
        """A buffer for ``rows`` rows of a table tensor ``like``: reused while one of its shape is large enough."""
        slot = (key, tuple(like.shape[1:]), like.dtype, like.device, torch.is_inference_mode_enabled())
        buffer = self.buffers.get(slot)
        if buffer is None or buffer.shape[0] < rows:
            buffer = self.buffers[slot] = like.new_empty((rows, *like.shape[1:]))
        return buffer[:rows]


@dataclass(frozen=True)
class CallRoute:
    """The route of one model call in progress: its routing, its own composition (None: the model-wide one), how
    deeply calls are nested (PeftModel's hook around the tuner's forward: the outermost decides) and the call's
    gather memory."""

    routing: Optional[Routing] = None
    composition: Optional[object] = None
    depth: int = 0
    scratch: GatherScratch = field(default_factory=GatherScratch, compare=False, repr=False)


class RoutingState:
    """A model's routing: the model-wide composition (``compose()``) and, per thread / asyncio task, the route of the
    call in progress (``call``, a ContextVar: never shared between concurrent calls)."""

    def __init__(self) -> None:
        self.composition: Optional[object] = None  # model-wide, set by compose()
        self._call: ContextVar[Optional[CallRoute]] = ContextVar(f"peft_bottleneck_route_{id(self)}", default=None)

    def __getstate__(self) -> dict:  # a ContextVar is not copied or pickled: a copy starts with no call in progress
        return {"composition": self.composition}

    def __setstate__(self, state: dict) -> None:
        self.__init__()
        self.composition = state["composition"]

    @property
    def current(self) -> Optional[CallRoute]:
        return self._call.get()

    @property
    def routing(self) -> Optional[Routing]:
        """The routing of this thread's / task's call in progress (None outside a call)."""
        call = self._call.get()
        return None if call is None else call.routing

    @property
    def active_composition(self) -> Optional[object]:
        """The composition of the call in progress: its own (a per-call block), else the model-wide one."""
        call = self._call.get()
        if call is not None and call.composition is not None:
            return call.composition
        return self.composition

    @contextmanager
    def entered(self, route: CallRoute):
        token = self._call.set(route)
        try:
            yield route
        finally:
            self._call.reset(token)


def carry_route(checkpoint_func):
    """Wrap a gradient-checkpoint function so the checkpointed block runs, and re-runs during backward, inside a
    copy of the context of its forward (its call's route), whichever thread runs the backward."""
    if getattr(checkpoint_func, "carries_route", False):
        return checkpoint_func

    def carrying(function, *args, **kwargs):
        return checkpoint_func(partial(copy_context().run, function), *args, **kwargs)

    carrying.carries_route = True
    carrying.wrapped = checkpoint_func
    return carrying


# -- gathering ------------------------------------------------------------------------------------------------------


def stamp(tensors) -> tuple:
    """Changes whenever any of the tensors is replaced or modified in place (optimizer step, load, copy_)."""
    return tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)


@dataclass(frozen=True)
class StackedRows:
    """Stacked route weights as one lookup found them: row 0 is the base route (all zeros), then each adapter's
    routes. A call gathers from these tensors even if another thread grows or rebuilds the table meanwhile (that
    makes new tensors; the rows a lookup returned are never moved within these)."""

    tensors: dict[str, torch.Tensor]
    kinds: tuple[str, ...]
    activation_codes: torch.Tensor

    def gather(self, rows: torch.Tensor, scratch: Optional[GatherScratch] = None) -> dict[str, torch.Tensor]:
        """Each row's weights: fresh tensors, or views of ``scratch`` (valid until the next gather into it)."""
        if scratch is None:
            return {k: v[rows] for k, v in self.tensors.items()}
        return {k: torch.index_select(v, 0, rows, out=scratch.take(k, v, rows.shape[0]))
                for k, v in self.tensors.items()}

    def activation_of(self, rows: torch.Tensor):
        """One name when every row shares a non-linearity, else (code per example, the names the codes index)."""
        if len(self.kinds) <= 1:
            return self.kinds[0] if self.kinds else "identity"
        return self.activation_codes.to(rows.device)[rows], self.kinds


class _Rows:
    """Builds stacked route weights (``StackedRows``) and knows where each adapter's routes start."""

    def __init__(self) -> None:
        self._clear()

    def _clear(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.first_row: dict[str, int] = {}
        self.route_count: dict[str, int] = {}
        # distinct non-linearities and, per row, an index into them (the base route's zero weights give zero under
        # any of them, so its code does not matter)
        self.kinds: list[str] = []
        self.activation_codes = torch.zeros(0, dtype=torch.long)

    def stacked(self) -> StackedRows:
        return StackedRows(self.tensors, tuple(self.kinds), self.activation_codes)

    def _code(self, activation: str) -> int:
        if activation not in self.kinds:
            self.kinds.append(activation)
        return self.kinds.index(activation)


class RouteTable(_Rows):
    """Every adapter of one layer, stacked, for gathering per example at inference.

    An adapter's rows are rewritten only when its tensors changed (``stamp``); a new adapter is appended into spare
    capacity (grown by half when full). Spare rows are allocated but never written or read, so on CPU their pages are
    never touched and cost no resident memory. Keeping the table fresh costs, per forward, one stamp check for each
    adapter the batch uses; a wider bottleneck or a new kind of column rebuilds it once.
    """

    def __init__(self, on_input: bool = False) -> None:
        super().__init__()
        self.on_input = on_input  # the side of the module whose adapters this table holds
        # concurrent calls may find the table stale at once (the first calls of a server, or after adapters were
        # added): one of them brings it up to date while the others wait
        self._lock = threading.Lock()

    def _clear(self) -> None:
        super()._clear()
        self.stamps: dict[str, tuple] = {}
        self.used = 1

    def __getstate__(self) -> dict:  # a copy of the model starts with an empty table (rebuilt on its first use)
        return {"on_input": self.on_input}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["on_input"])

    def lookup(self, layer, names: Sequence[str]) -> tuple[torch.Tensor, StackedRows]:
        """First row of each name and the stacked weights those rows index, up to date with the layer's adapters."""
        with self._lock:
            return self._rows(layer, names), self.stacked()

    def _rows(self, layer, names: Sequence[str]) -> torch.Tensor:
        """First table row of each name (0, the base route, for BASE_ROUTE or an adapter this layer lacks)."""
        starts = []
        for name in names:  # the distinct adapters of the batch: a lookup and a stamp check each
            if name == BASE_ROUTE or name not in layer.settings:
                starts.append(0)
                continue
            current = layer.adapter_stamp(name)
            if self.stamps.get(name) != current:
                self._refresh(layer, name, current)
            starts.append(self.first_row[name])
        return torch.tensor(starts, dtype=torch.long)

    def _refresh(self, layer, name: str, current: tuple) -> None:
        columns = layer.route_columns(name)
        if self._fits(name, columns):
            self._write(name, columns, layer.settings[name].non_linearity)
            self.stamps[name] = current
        else:
            self.rebuild(layer)

    def _fits(self, name: str, columns: dict) -> bool:
        if not self.tensors:
            return False
        reference, value = self.tensors["down_weight"], columns["down_weight"]
        routes = value.shape[0]
        return (reference.device == value.device and reference.dtype == value.dtype
                and set(columns) <= set(self.tensors) and value.shape[1] <= reference.shape[1]
                and self.route_count.get(name, routes) == routes)

    def rebuild(self, layer) -> None:
        # list(): a snapshot taken at once, though another thread may be adding an adapter to the layer
        every = {name: layer.route_columns(name) for name, s in list(layer.settings.items())
                 if not s.is_fusion and s.on_input == self.on_input}
        self._clear()
        if not every:
            return
        width = max(c["down_weight"].shape[1] for c in every.values())
        total = 1 + sum(c["down_weight"].shape[0] for c in every.values())
        shapes = {key: (value, _padded_shape(key, value, width)) for c in every.values() for key, value in c.items()}
        capacity = _capacity(total)
        self.tensors = {key: value.new_empty((capacity, *shape)) for key, (value, shape) in shapes.items()}
        with torch.no_grad():
            for table in self.tensors.values():
                table[0].zero_()  # the base route
        self.activation_codes = torch.zeros(capacity, dtype=torch.long)
        for name, columns in every.items():
            self._write(name, columns, layer.settings[name].non_linearity)
            self.stamps[name] = layer.adapter_stamp(name)

    def _write(self, name: str, columns: dict, activation: str) -> None:
        routes = columns["down_weight"].shape[0]
        if name not in self.first_row:
            self._reserve(routes)
            self.first_row[name], self.route_count[name] = self.used, routes
            self.used += routes
        start = self.first_row[name]
        self.activation_codes[start:start + routes] = self._code(activation)
        width = self.tensors["down_weight"].shape[1]
        with torch.no_grad():  # one copy per block (no zeroing first): a concurrent reader sees old or new values
            for key, table in self.tensors.items():
                block = table[start:start + routes]
                if key in columns:
                    block.copy_(_pad_column(key, columns[key], width))
                else:
                    block.zero_()

    def _reserve(self, routes: int) -> None:
        capacity = self.tensors["down_weight"].shape[0]
        if self.used + routes <= capacity:
            return
        grown = _capacity(self.used + routes)
        self.tensors = {k: _moved_rows(v, self.used, grown) for k, v in self.tensors.items()}
        self.activation_codes = torch.cat([self.activation_codes, torch.zeros(grown - capacity, dtype=torch.long)])


def _capacity(rows: int) -> int:
    """Rows to allocate for ``rows`` in use: half again as many, so appending one by one copies each row O(1) times."""
    return rows + max(rows // 2, 1)


def _moved_rows(table: torch.Tensor, used: int, capacity: int) -> torch.Tensor:
    """``table``'s first ``used`` rows in a new allocation of ``capacity`` rows (the rest left unwritten)."""
    grown = table.new_empty((capacity, *table.shape[1:]))
    with torch.no_grad():
        grown[:used].copy_(table[:used])
    return grown


class LiveRows(_Rows):
    """The routed adapters' weights stacked afresh with their gradients (training through a mixed batch)."""

    def __init__(self, layer, names: Sequence[str]) -> None:
        super().__init__()
        names = [n for n in dict.fromkeys(names) if n in layer.settings]
        every = [layer.columns(n) for n in names]
        width = max(c["down_weight"].shape[1] for c in every)
        keys = set().union(*every)
        codes = [0]
        position = 1
        for name, columns in zip(names, every):
            routes = columns["down_weight"].shape[0]
            self.first_row[name], self.route_count[name] = position, routes
            codes += [self._code(layer.settings[name].non_linearity)] * routes
            position += routes
        for key in keys:
            reference = next(c[key] for c in every if key in c)
            zero_row = reference.new_zeros((1, *_padded_shape(key, reference, width)))
            parts = [zero_row] + [
                _pad_column(key, c[key], width) if key in c
                else zero_row.expand(c["down_weight"].shape[0], *zero_row.shape[1:]) for c in every
            ]
            self.tensors[key] = torch.cat(parts)
        self.activation_codes = torch.tensor(codes, dtype=torch.long)

    def lookup(self, layer, names: Sequence[str]) -> tuple[torch.Tensor, StackedRows]:
        return torch.tensor([self.first_row.get(n, 0) for n in names], dtype=torch.long), self.stacked()


def _padded_shape(key: str, value: torch.Tensor, width: int) -> tuple[int, ...]:
    """Per-route shape of a column with its bottleneck dimension padded to ``width``."""
    shape = list(value.shape[1:])
    if key in ("down_weight", "down_bias"):
        shape[0] = width
    elif key == "up_weight":
        shape[1] = width
    return tuple(shape)


def _pad_column(key: str, value: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad a column's bottleneck dimension to ``width``: exact, since every allowed activation maps 0 to 0."""
    if key == "down_weight":
        return F.pad(value, (0, 0, 0, width - value.shape[1]))
    if key == "down_bias":
        return F.pad(value, (0, width - value.shape[1]))
    if key == "up_weight":
        return F.pad(value, (0, width - value.shape[2]))
    return value
