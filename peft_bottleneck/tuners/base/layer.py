"""The one adapted layer: wraps a module, holds every adapter's tensors, and runs one routed forward.

An adapter's tensors are kept in ``nn.ParameterDict``s named ``<tuner prefix><tensor>`` (``bottleneck_down_weight``,
``compacter_up_s``, ...), keyed by adapter name, each with a leading dimension over the adapter's routes (1, or one
per task). What an adapter computes follows AdapterHub's bottleneck block exactly (``AdapterConfigBase``): the
adapter's input and residual, down-projection, non-linearity, up-projection, scaling, dropout, gating and the layer
norms around it. The block's residual input and LayerNorm, which some settings need, come from the wrapped model
through forward hooks on the modules that ``target_modules.ADAPTER_POSITIONS`` names (``BlockContext``).

The path of one batch: ``forward`` runs the wrapped module, then either applies the active adapters in turn (each
for the whole batch, or per example by task), or, when the batch mixes adapters (``adapter_names``), gathers every
example's weights from the layer's ``RouteTable`` and applies them in one batched computation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from torch.nn.modules.module import _global_forward_hooks
from transformers.pytorch_utils import Conv1D

from ...activations import get_activation
from .config import AdapterConfigBase
from .kinds import AdapterKind, Projections, Sizes, kaiming_down_zero_up, kind_of
from . import blocks
from .routing import BASE_ROUTE, LiveRows, RouteTable, Routing, RoutingState, stamp

MERGE_ERROR = (
    "{kind} adapters cannot be merged into the base weights: the adapter computes W_up f(W_down h) with a "
    "non-linearity f (and, for sequential adapters, on the module's output), which no single linear layer "
    "reproduces. Keep the adapter attached, or call `unload()` to get the base model back without it."
)
# tensors every kind may have besides its projections, created only when the config asks for them
EXTRA_TENSORS = ("scale", "gate_weight", "gate_bias", "ln_before_weight", "ln_before_bias", "ln_after_weight",
                 "ln_after_bias")


def projection_dims(module: nn.Module) -> tuple[int, int]:
    """(in, out) features of a module: its own if it is a projection, else its first and last projection's."""
    projections = [m for m in module.modules() if isinstance(m, (nn.Linear, Conv1D))]
    if not projections:
        raise TypeError(
            f"Cannot size an adapter for {type(module).__name__}: it holds no nn.Linear or Conv1D. Target linear "
            "layers (or blocks made of them) instead."
        )
    first, last = projections[0], projections[-1]
    in_features = first.in_features if isinstance(first, nn.Linear) else first.weight.shape[0]
    out_features = last.out_features if isinstance(last, nn.Linear) else last.weight.shape[1]
    return in_features, out_features


def input_features(module: nn.Module) -> int:
    """Features of a module's input: a norm's own size (its 1-D weight), else its first projection's."""
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 1:
        return weight.shape[0]
    return projection_dims(module)[0]


@dataclass(frozen=True)
class AdapterSettings:
    """What a layer needs to know of one of its adapters besides its tensors."""

    config: AdapterConfigBase
    kind: type[AdapterKind]
    routes: int
    tasks: Optional[tuple[str, ...]]  # the task of each route, for task-routed adapters
    post_ln: bool  # the model applies a LayerNorm after this module's block (post-LN), else only the residual add
    on_input: bool = False  # transforms the module's input (module(x + s * A(x))) instead of its output
    default_route: Optional[int] = None  # the route a call without task routing takes (a controller's default_task)

    @property
    def non_linearity(self) -> str:
        return self.config.non_linearity

    @property
    def is_fusion(self) -> bool:
        return self.kind.name == "fusion"

    @property
    def simple(self) -> bool:
        """Plain ``h + s * A(source)``: no layer norms, gating, learned vector scale or residual variants."""
        c = self.config
        return (not c.needs_block_context and c.residual_before_ln is True and not (c.ln_before or c.ln_after)
                and not c.use_gating and not isinstance(c.scaling, str))


class BlockContext:
    """What an adapter reads around its module, captured by forward hooks on the model's own modules each call.

    ``input_source``: a module whose input a parallel adapter reads (BERT's ``intermediate`` for the adapter on
    ``output.dense``). ``residual_source``: (module, argument) giving the block's residual input. ``layer_norm``:
    the block's LayerNorm (post-LN models), used by ``original_ln_before`` and overridden (``original_ln_after=False``)
    through a forward hook. Each captured tensor is consumed by the layer's next call, so nothing outlives a forward
    (or a checkpointed re-forward).
    """

    def __init__(self) -> None:
        self.input_source: Optional[nn.Module] = None
        self.input_features: Optional[int] = None  # measured by discovery, else read off the source's weights
        self.residual_argument: Optional[int | str] = None
        self.layer_norm: Optional[nn.Module] = None
        self._handles: list = []
        self._input = None
        self._residual = None
        self._ln_output = None

    def attach(self, input_source=None, residual_source=None, residual_argument=None, layer_norm=None,
               input_features: Optional[int] = None) -> None:
        if input_source is not None and self.input_source is None:
            self.input_source = input_source
            self.input_features = input_features
            self._handles.append(input_source.register_forward_pre_hook(self._store_input, with_kwargs=True))
        if residual_source is not None and self.residual_argument is None:
            self.residual_argument = residual_argument
            self._handles.append(residual_source.register_forward_pre_hook(self._store_residual, with_kwargs=True))
        if layer_norm is not None and self.layer_norm is None:
            self.layer_norm = layer_norm
            self._handles.append(layer_norm.register_forward_hook(self._replace_ln_output))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self.__init__()

    @property
    def reads_input(self) -> bool:
        return self.input_source is not None

    def _store_input(self, module, args, kwargs):
        self._input = args[0] if args else next(iter(kwargs.values()))

    def _store_residual(self, module, args, kwargs):
        position, keyword = self.residual_argument
        self._residual = kwargs[keyword] if keyword in kwargs else args[position] if position is not None and len(
            args) > position else None

    def _replace_ln_output(self, module, args, output):
        replacement, self._ln_output = self._ln_output, None
        if replacement is None:
            return None
        value, keep_own = replacement
        return value if keep_own is None else torch.where(keep_own, output, value)

    def take(self) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        tapped, residual = self._input, self._residual
        self._input = self._residual = None
        if self.input_source is not None and tapped is None:
            raise RuntimeError(
                "This parallel adapter reads the input of another module (see `input_from`), but that module did "
                "not run before it. Call the whole block, or target modules that read their own input."
            )
        return tapped, residual

    def replace_layer_norm_output(self, value: torch.Tensor, keep_own: Optional[torch.Tensor]) -> None:
        self._ln_output = (value, keep_own)


class AdapterLayer(nn.Module, BaseTunerLayer):
    """Wraps ``base_layer`` and adds bottleneck adapters to its output, one per adapter name.

    Subclasses set ``prefix`` (their tuner's, so PEFT finds, trains and saves the tensors) and nothing else: the
    kind of each adapter (plain projections, PHM, ...) comes from its config through the kind registry.
    """

    prefix: str = ""
    adapter_kind = "Bottleneck"  # for messages

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: AdapterConfigBase, *,
                 routing_state: Optional[RoutingState] = None, context: Optional[BlockContext] = None,
                 shared_owner: Optional[nn.Module] = None, features: Optional[tuple[int, int]] = None,
                 **kwargs) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter_layer_names: tuple[str, ...] = ()
        self.other_param_names = ("settings",)
        self.settings: dict[str, AdapterSettings] = {}
        # shared tensors registered in another layer: (tensor name, adapter) -> that layer (looked up on use, so a
        # cast or move that replaces the tensor there is seen here too)
        self.__dict__["shared_refs"] = {}
        # one table per side: adapters on the module's input see its input features, those on its output its output
        self.__dict__["route_table"] = RouteTable(on_input=False)
        self.__dict__["input_route_table"] = RouteTable(on_input=True)
        self.__dict__["context"] = context or BlockContext()
        self.__dict__["routing_state"] = routing_state or RoutingState()
        self._disable_adapters = False
        self.merged_adapters = []
        # a block without linear layers of its own (a mixture-of-experts block with fused experts) comes with the
        # features discovery measured on it
        self.in_features, self.out_features = features or projection_dims(self.get_base_layer())
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, shared_owner=shared_owner, **kwargs)

    # -- construction -------------------------------------------------------------------------------------------

    def container(self, tensor: str) -> nn.ParameterDict:
        """The ``ParameterDict`` holding tensor ``tensor`` of every adapter, created on first use."""
        name = self.prefix + tensor
        if name not in self.adapter_layer_names:
            self.add_module(name, nn.ParameterDict())
            self.adapter_layer_names = (*self.adapter_layer_names, name)
        return getattr(self, name)

    def adapter_sizes(self, config: AdapterConfigBase, routes: int, layer_index: Optional[int] = None) -> Sizes:
        in_features = self.adapter_in_features(config)
        return Sizes(routes, in_features, config.bottleneck_width(self.width_reference(in_features), layer_index),
                     self.out_features)

    def adapter_in_features(self, config: AdapterConfigBase) -> int:
        if not config.is_parallel:
            return self.out_features  # a sequential adapter reads the module's output
        if self.context.reads_input:
            return self.context.input_features or input_features(self.context.input_source)
        return self.in_features

    def width_reference(self, in_features: int) -> int:
        """The hidden size the reduction factor divides: the module's output (the LM-head adapter: its input)."""
        return self.out_features

    def routes_for(self, config, adapter_name: str) -> tuple[int, Optional[tuple[str, ...]]]:
        """(number of routes, their task names): one plain route; task-routed layers override this."""
        return 1, None

    def kind_config(self, config):
        """The adapter config this layer builds from (the controller nests it)."""
        return config

    def update_layer(self, adapter_name: str, config, *, shared_owner: Optional[nn.Module] = None,
                     on_input: bool = False, **kwargs) -> None:
        """Add an adapter. ``shared_owner``: the layer that holds the adapter's model-wide tensors (they are
        referenced, not made again; without it this layer makes and registers them); ``on_input``: the adapter
        transforms the module's input."""
        adapter_config = self.kind_config(config)
        kind = FusionKind if getattr(adapter_config, "fusion_of", None) else kind_of(adapter_config)
        routes, tasks = self.routes_for(config, adapter_name)
        layer_index = kwargs.get("layer_index")
        sizes = self.adapter_sizes(adapter_config, routes, layer_index)
        if on_input:
            sizes = Sizes(routes, self.in_features, adapter_config.bottleneck_width(self.in_features, layer_index),
                          self.in_features)
        tensors = kind.create(adapter_config, sizes)
        if kind is not FusionKind:
            tensors.update(self._extra_tensors(adapter_config, sizes))
        kind.reset(tensors, adapter_config, adapter_config.init_weights)
        for tensor, value in tensors.items():
            self.container(tensor)[adapter_name] = nn.Parameter(value)
        if shared_owner is None:
            for tensor, value in kind.create_shared(adapter_config, sizes).items():
                self.container(tensor)[adapter_name] = nn.Parameter(value)
        if shared_owner is not None and kind.has_shared(adapter_config):
            shared = {t: shared_owner.container(t)[adapter_name] for t in kind.shared_tensors(adapter_config)
                      if adapter_name in shared_owner.container(t)}
            kind.check_shared(shared, sizes)
            for tensor in shared:
                self.shared_refs[(tensor, adapter_name)] = shared_owner
        if not getattr(adapter_config, "learn_phm", True):
            # per-instance copy: the class attribute is a shared default
            self.frozen_peft_weight_names = {**self.frozen_peft_weight_names,
                                             adapter_name: (self.prefix + "phm_rule",)}
        default = getattr(config, "default_task", None)
        self.settings[adapter_name] = AdapterSettings(adapter_config, kind, routes, tasks, self.post_ln_block,
                                                      on_input, tasks.index(default) if tasks and default else None)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        # only the new adapter's trainability is set here: touching every adapter would make adding the n-th one
        # cost n
        trainable = adapter_name in self.active_adapters and not config.inference_mode
        for tensor in self.tensors_of(adapter_name, own_only=True).values():
            tensor.requires_grad_(trainable)
        self._freeze_non_trainable_peft_weights(adapter_name)

    @property
    def post_ln_block(self) -> bool:
        return self.context.layer_norm is not None

    @staticmethod
    def _extra_tensors(config: AdapterConfigBase, sizes: Sizes) -> dict[str, torch.Tensor]:
        routes, in_features, _, out = sizes
        extra = {}
        if config.scaling == "learned":
            extra["scale"] = torch.ones(routes)
        elif config.scaling == "channel":
            extra["scale"] = torch.ones(routes, out)
        if config.use_gating:
            extra["gate_weight"] = torch.empty(routes, 1, in_features)
            extra["gate_bias"] = torch.zeros(routes, 1)
            nn.init.normal_(extra["gate_weight"], std=0.02)  # AdapterHub initialises its gate BERT-style
        if config.ln_before:
            extra["ln_before_weight"], extra["ln_before_bias"] = torch.ones(routes, in_features), torch.zeros(
                routes, in_features)
        if config.ln_after:
            extra["ln_after_weight"], extra["ln_after_bias"] = torch.ones(routes, out), torch.zeros(routes, out)
        return extra

    def reset_adapter(self, adapter_name: str, init_weights) -> None:
        """Re-initialise one adapter's projections (``init_weights`` as in the configs)."""
        settings = self.settings[adapter_name]
        with torch.no_grad():
            settings.kind.reset(self.tensors_of(adapter_name, own_only=True), settings.config, init_weights)

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device=None) -> None:
        """PEFT's version, touching only this adapter's tensors (PEFT's scans every adapter's, so the n-th
        addition would cost n)."""
        target_device, target_dtype = self._get_base_layer_device_and_dtype(self.get_base_layer())
        target_device = device if device is not None else target_device
        if target_device is None:
            return
        if target_dtype is not None and not (target_dtype.is_floating_point or target_dtype.is_complex):
            target_dtype = None
        for name in self.adapter_layer_names:
            container = getattr(self, name)
            item = container.get(adapter_name) if adapter_name in container else None
            if item is None or item.device == torch.device("meta"):
                continue
            moved = item.to(target_device, dtype=target_dtype) if target_dtype is not None and \
                item.is_floating_point() else item.to(target_device)
            if moved is not item:
                container[adapter_name] = moved

    def _get_base_layer_device_and_dtype(self, base_layer):
        device, dtype = super()._get_base_layer_device_and_dtype(base_layer)
        if device is None:
            # a whole block (e.g. an MLP) has no `weight`: use its first parameter
            first = next(base_layer.parameters(), None)
            if first is not None:
                device, dtype = first.device, first.dtype
        return device, dtype

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        for key in [k for k in self.shared_refs if k[1] == adapter_name]:
            del self.shared_refs[key]

    def bypass(self, bypassed: bool) -> None:
        """Run the wrapped module alone (``True``) or with its adapters again, leaving every adapter's trainability
        as it is (PEFT's ``enable_adapters`` would change it); AdapterDrop uses this."""
        self._disable_adapters = bypassed

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        raise ValueError(MERGE_ERROR.format(kind=self.adapter_kind))

    # -- reading an adapter -------------------------------------------------------------------------------------

    def tensors_of(self, adapter_name: str, own_only: bool = False) -> dict[str, torch.Tensor]:
        """Every tensor of one adapter in this layer, shared ones included (unless ``own_only``)."""
        tensors = {}
        # dict lookups, not Module.__getattr__: a mixed batch checks every adapter it names in every layer (a
        # ParameterDict keeps each entry in `_parameters` under its key: pinned in tests/tuners/base/test_layer.py).
        # Indexing, never `.get`: DeepSpeed ZeRO-3 gathers a partitioned parameter in `_parameters.__getitem__`.
        modules = self._modules
        for container_name in self.adapter_layer_names:
            parameters = modules[container_name]._parameters
            if adapter_name in parameters:
                tensors[container_name[len(self.prefix):]] = parameters[adapter_name]
        if not own_only:
            for (tensor, name), owner in self.shared_refs.items():
                if name == adapter_name:
                    tensors[tensor] = getattr(owner, self.prefix + tensor)[name]
        return tensors

    def projections(self, adapter_name: str) -> Projections:
        settings = self.settings[adapter_name]
        return settings.kind.projections(self.tensors_of(adapter_name))

    def adapter_stamp(self, adapter_name: str) -> tuple:
        return (id(self.settings[adapter_name]), stamp(self.tensors_of(adapter_name).values()))

    def columns(self, adapter_name: str) -> dict[str, torch.Tensor]:
        """One adapter's weights per route, as the routed computation reads them (scale expanded to (R, out))."""
        settings = self.settings[adapter_name]
        tensors = self.tensors_of(adapter_name)
        projections = settings.kind.projections(tensors)
        reference = projections.down_weight
        routes = reference.shape[0]
        out = projections.up_weight.shape[1]  # the output's features, or the input's for an adapter on the input
        columns = {
            "down_weight": projections.down_weight,
            "down_bias": projections.down_bias if projections.down_bias is not None else reference.new_zeros(
                routes, projections.width),
            "up_weight": projections.up_weight,
            "up_bias": projections.up_bias if projections.up_bias is not None else reference.new_zeros(
                routes, out),
        }
        scale = tensors.get("scale")
        if scale is None:
            scale = reference.new_full((routes, 1), float(settings.config.scaling))
        columns["scale"] = (scale.unsqueeze(-1) if scale.dim() == 1 else scale).expand(routes, out)
        for extra in EXTRA_TENSORS[1:]:
            if extra in tensors:
                columns[extra] = tensors[extra]
        return columns

    def route_columns(self, adapter_name: str) -> dict[str, torch.Tensor]:
        """``columns`` for the inference route table, the scale folded into the up projection
        (``s * (W z + b) == (s W) z + s b``: one multiply fewer per mixed forward)."""
        with torch.no_grad():
            columns = {k: v.detach() for k, v in self.columns(adapter_name).items()}
            scale = columns.pop("scale")
            columns["up_weight"] = columns["up_weight"] * scale.unsqueeze(-1).to(columns["up_weight"].dtype)
            columns["up_bias"] = columns["up_bias"] * scale.to(columns["up_bias"].dtype)
        return columns

    # -- forward ------------------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        tapped, residual = self.context.take()
        if self.disable_adapters:
            return self.base_layer(x, *args, **kwargs)
        routing = self.routing_state.routing
        if any(s.on_input for s in self.settings.values()):
            x = self._adapt(x, x, None, routing, on_input=True)
        result = self.base_layer(x, *args, **kwargs)
        source = x if tapped is None else tapped
        if isinstance(result, tuple):  # blocks that return (hidden states, extras): adapt the hidden states
            writable = _writable(result[0], x, *args, *kwargs.values(), *result[1:]) and not self._output_observed()
            return (self._adapt(result[0], source, residual, routing, on_input=False, writable=writable),
                    *result[1:])
        writable = _writable(result, x, *args, *kwargs.values()) and not self._output_observed()
        return self._adapt(result, source, residual, routing, on_input=False, writable=writable)

    def _output_observed(self) -> bool:
        """Whether a forward hook may have kept the wrapped module's output (a user's, or a tool's capturing
        activations): it must keep seeing the output as the module returned it, so the adapters copy it."""
        return bool(_global_forward_hooks) or any(m._forward_hooks for m in self.base_layer.modules())

    def _adapt(self, h, parallel_input, residual, routing: Optional[Routing], on_input: bool,
               writable: bool = False) -> torch.Tensor:
        """``h`` through the adapters on this side of the module (its input or its output); ``writable``: ``h``
        may be updated in place (``_writable``)."""
        composition = self.routing_state.active_composition
        if composition is not None and not on_input:
            return self._composed(composition, h, parallel_input, residual, routing)
        active = self.active_adapters
        if routing is not None and routing.adapters is not None:
            if len(routing.adapters) > 1 or routing.adapters[0] == BASE_ROUTE:
                return self._mixed_forward(h, parallel_input, residual, routing, on_input, writable)
            # the whole batch names one adapter: the same computation as that adapter made active, no gather
            routing.check_rows(routing.adapter_codes.shape[0], h.shape[0])
            active = routing.adapters
        last = None
        for adapter_name in active:  # several active adapters apply in turn (a Stack)
            settings = self.settings.get(adapter_name)
            if settings is not None and settings.on_input == on_input and not settings.is_fusion:
                # each adapter's output is the next one's `h`: a fresh tensor, or `h` itself, so still writable
                h = self._apply_adapter(adapter_name, h, parallel_input, residual, routing, writable)
                last = settings
        if last is not None and not last.config.original_ln_after:
            h = self._skip_block_residual(h, residual, last, keep_own=None)
        return h

    def _apply_adapter(self, adapter_name: str, h, parallel_input, residual, routing: Optional[Routing],
                       writable: bool = False) -> torch.Tensor:
        settings = self.settings[adapter_name]
        source = parallel_input if settings.config.is_parallel else h
        if settings.routes > 1 and (routing is None or routing.task_codes is None) and \
                settings.default_route is not None:
            route = settings.default_route
            columns = {k: v[route:route + 1] for k, v in self.columns(adapter_name).items()}
            return self._adapter(h, source, residual, settings, columns, settings.non_linearity, per_example=False,
                                 dropout=settings.config.adapter_dropout)
        if settings.routes > 1:
            if routing is None or routing.task_codes is None:
                raise RuntimeError(
                    f"Adapter {adapter_name!r} routes by task {list(settings.tasks)}, but no `task` was given for "
                    "this forward."
                )
            codes = routing.task_rows(h.shape[0], h.device)
            columns = {k: v[codes] for k, v in self.columns(adapter_name).items()}
            return self._adapter(h, source, residual, settings, columns, settings.non_linearity, per_example=True,
                                 dropout=settings.config.adapter_dropout)
        if settings.simple:
            return self._simple(adapter_name, h, source, settings, writable)
        columns = self.columns(adapter_name)
        return self._adapter(h, source, residual, settings, columns, settings.non_linearity, per_example=False,
                             dropout=settings.config.adapter_dropout)

    def _simple(self, adapter_name: str, h, source, settings: AdapterSettings, writable: bool = False) -> torch.Tensor:
        """The common case, ``h + s * up(f(down(source)))``, with the fixed scale folded into the add; onto ``h``
        itself when it is ``writable``."""
        down_w, down_b, up_w, up_b = self.projections(adapter_name)
        source = self._cast_input_dtype(source, down_w.dtype)
        # the down projection's output is fresh: without gradients the activation may overwrite it
        hidden = get_activation(settings.non_linearity, in_place=not torch.is_grad_enabled())(
            F.linear(source, down_w[0], None if down_b is None else down_b[0]))
        scaling = float(settings.config.scaling)
        if h.dtype == hidden.dtype == up_w.dtype and h.is_contiguous() and not (settings.config.adapter_dropout and
                                                                                self.training):
            # the up projection accumulates onto h (or a copy): one pass over the output fewer than adding it
            # after, and no new output at all when h is ours to write
            if writable:
                out = h if up_b is None else h.add_(up_b[0], alpha=scaling)
            else:
                out = h.clone(memory_format=torch.contiguous_format) if up_b is None else torch.add(
                    h, up_b[0], alpha=scaling)
            out.view(-1, out.shape[-1]).addmm_(hidden.reshape(-1, hidden.shape[-1]), up_w[0].t(), alpha=scaling)
            return out
        delta = F.linear(hidden, up_w[0], None if up_b is None else up_b[0]).to(h.dtype)
        delta = F.dropout(delta, settings.config.adapter_dropout, self.training)
        return torch.add(h, delta, alpha=scaling)

    def _mixed_forward(self, result, parallel_input, residual, routing: Routing, on_input: bool,
                       writable: bool = False) -> torch.Tensor:
        """Every example through its own adapter (``adapter_names``), in one batched computation per wiring.

        Adapters wired differently (e.g. Houlsby and Pfeiffer, sequential and parallel) share a batch: each of the
        few distinct wirings is computed for the whole batch and kept for its own examples."""
        present = [n for n in routing.adapters if n in self.settings and self.settings[n].on_input == on_input
                   and not self.settings[n].is_fusion]
        if not present:
            return result
        examples = routing.adapter_rows(result.shape[0], result.device)
        wirings: dict[tuple, list[str]] = {}
        for name in present:  # the distinct adapters of the batch
            wirings.setdefault(self.settings[name].config.structure(), []).append(name)
        out, skipped = result, []
        # `result` is read by every wiring and kept by the examples of none: written in place only when one wiring
        # takes every example
        writable = writable and len(wirings) == 1 and set(present) >= set(routing.adapters)
        for names in wirings.values():  # the few distinct wirings, never the adapters or examples
            settings = self.settings[names[0]]
            columns, activation = self._per_example_columns(routing, examples, names)
            source = parallel_input if settings.config.is_parallel else result
            wired = self._adapter(result, source, residual, settings, columns, activation, per_example=True,
                                  dropout=0.0, writable=writable)
            if set(names) >= set(routing.adapters):  # every example is this wiring's: nothing to keep from `out`
                out = wired
            else:
                out = torch.where(self._example_mask(routing, examples, names, out.dim()), wired, out)
            if not settings.config.original_ln_after:
                skipped += names
        if skipped:
            keep_own = ~self._example_mask(routing, examples, skipped, out.dim())
            return self._skip_block_residual(out, residual, self.settings[skipped[0]], keep_own=keep_own)
        return out

    # -- composition (blocks.py) ----------------------------------------------------------------------------

    def _composed(self, block, h, parallel_input, residual, routing) -> torch.Tensor:
        out = self._evaluate(block, h, parallel_input, residual, routing)
        last = self.settings.get(_last_leaf(block))
        if last is not None and not last.config.original_ln_after:
            out = self._skip_block_residual(out, residual, last, keep_own=None)
        return out

    def _evaluate(self, block, h, parallel_input, residual, routing) -> torch.Tensor:
        """A composition tree on the module's output ``h`` (a layer without one of its adapters passes ``h`` on)."""
        if isinstance(block, str):
            if block not in self.settings:
                return h
            return self._apply_adapter(block, h, parallel_input, residual, routing)
        if isinstance(block, blocks.Stack):
            for child in block.children:
                h = self._evaluate(child, h, parallel_input, residual, routing)
            return h
        if isinstance(block, blocks.Average):
            return sum(w * self._evaluate(c, h, parallel_input, residual, routing)
                       for w, c in zip(block.weights, block.children))
        if isinstance(block, blocks.Fuse):
            return self._fuse(block, h, parallel_input, residual, routing)
        if isinstance(block, blocks.Split):
            return self._split(block, h, parallel_input, residual, routing)
        sizes = block.batch_sizes if isinstance(block, blocks.BatchSplit) else None
        if sizes is None:  # Parallel: the model's inputs were replicated once per child
            copies = len(block.children)
            if h.shape[0] % copies:
                raise ValueError(f"{block!r} needs the batch replicated {copies} times; run it through the PeftModel.")
            sizes = [h.shape[0] // copies] * copies
        if sum(sizes) != h.shape[0]:
            raise ValueError(f"{block!r} splits {sum(sizes)} examples, but the batch has {h.shape[0]}.")
        if all(isinstance(c, str) for c in block.children):  # per-example routing: one batched computation
            codes = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
            split = Routing(tuple(block.children), codes, *(() if routing is None else (routing.tasks,
                                                                                        routing.task_codes)))
            return self._mixed_forward(h, parallel_input, residual, split, on_input=False)
        parts, start = [], 0
        for child, size in zip(block.children, sizes):  # the block's few children, never the examples
            piece = slice(start, start + size)
            parts.append(self._evaluate(child, h[piece], parallel_input[piece],
                                        None if residual is None else residual[piece], None))
            start += size
        return torch.cat(parts)

    def _split(self, block, h, parallel_input, residual, routing) -> torch.Tensor:
        """AdapterHub's Split: consecutive slices of the sequence (dimension 1) to the children, in order."""
        if h.dim() < 3 or sum(block.splits) != h.shape[1]:
            raise ValueError(f"{block!r} splits {sum(block.splits)} positions, but this layer sees a sequence of "
                             f"{h.shape[1] if h.dim() >= 3 else 'none'} (shape {tuple(h.shape)}): the splits must add "
                             "up to the sequence length.")
        parts, start = [], 0
        for child, size in zip(block.children, block.splits):  # the block's few children, never the positions
            piece = (slice(None), slice(start, start + size))
            parts.append(self._evaluate(child, h[piece], parallel_input[piece],
                                        None if residual is None else residual[piece], routing))
            start += size
        return torch.cat(parts, dim=1)

    def _fuse(self, block, h, parallel_input, residual, routing) -> torch.Tensor:
        """AdapterFusion: ``h + sum_i softmax_i(q . k_i) v_i`` over the children's scaled outputs ``u_i``."""
        fusion = self.settings.get(block.name)
        names = [n for n in block.children if n in self.settings]
        if fusion is None or len(names) < len(block.children):
            return h  # a layer without this fusion (or its adapters) passes the output on
        outputs = torch.stack([self._apply_adapter(n, h, parallel_input, residual, routing) - h for n in names], -2)
        t = {k: v[0] for k, v in self.tensors_of(block.name).items()}
        query = F.linear(h, t["fusion_query_weight"].to(h.dtype), t["fusion_query_bias"].to(h.dtype))
        keys = F.linear(outputs, t["fusion_key_weight"].to(h.dtype), t["fusion_key_bias"].to(h.dtype))
        values = F.linear(outputs, t["fusion_value_weight"].to(h.dtype))
        attention = torch.softmax((query.unsqueeze(-2) * keys).sum(-1), dim=-1)
        self.__dict__["last_fusion_attention"] = attention.detach().reshape(-1, attention.shape[-1]).mean(0)
        return h + (attention.unsqueeze(-1) * values).sum(-2)

    @staticmethod
    def _example_mask(routing: Routing, examples: torch.Tensor, names, dims: int) -> torch.Tensor:
        chosen = torch.tensor([n in names for n in routing.adapters], device=examples.device)
        return chosen[examples].view(-1, *([1] * (dims - 1)))

    def _per_example_columns(self, routing: Routing, examples: torch.Tensor, present):
        """Each example's weights, gathered from the route table (or, when gradients are needed, from the routed
        adapters stacked afresh), and its activation."""
        with_grad = torch.is_grad_enabled() and any(
            p.requires_grad for n in present for p in self.tensors_of(n).values())
        on_input = self.settings[present[0]].on_input  # `present` holds the adapters of one side
        table = LiveRows(self, present) if with_grad else self.input_route_table if on_input else self.route_table
        starts, stacked = table.lookup(self, [n if n in present else BASE_ROUTE for n in routing.adapters])
        routes = torch.tensor([self.settings[n].routes if n in self.settings else 1 for n in routing.adapters])
        rows = starts[examples.cpu()]
        if bool((routes > 1).any()):
            if routing.task_codes is None:
                raise RuntimeError("A task-routed adapter in `adapter_names` needs `task=` as well.")
            tasks = routing.task_rows(examples.shape[0], torch.device("cpu"))
            rows = rows + tasks * (routes[examples.cpu()] > 1)
        rows = rows.to(examples.device)
        # without gradients nothing keeps the gathered weights past this layer: gather into the call's own memory
        call = self.routing_state.current
        scratch = call.scratch if call is not None and not torch.is_grad_enabled() else None
        return stacked.gather(rows, scratch), stacked.activation_of(rows)

    # -- the adapter computation (AdapterHub's pre_forward / forward / post_forward) --------------------------

    def _adapter(self, h, source, residual, settings: AdapterSettings, columns: dict, activation, *,
                 per_example: bool, dropout: float, writable: bool = False) -> torch.Tensor:
        """The block output before the model's own residual / LayerNorm, for one adapter (``per_example``: one set
        of weights per example, else one for the batch; ``writable``: ``h`` may be updated in place)."""
        config = settings.config
        layer_norm = self.context.layer_norm
        residual_after = h if config.residual_before_ln is True else None
        if config.is_parallel:
            adapter_input = source
        elif config.original_ln_before:
            added = h if residual is None else h + residual
            if config.residual_before_ln == "post_add":
                residual_after = added
            adapter_input = layer_norm(added) if layer_norm is not None else added
        else:
            adapter_input = h
        if config.residual_before_ln is False:
            residual_after = adapter_input
        onto = (h if config.is_parallel else residual_after) if per_example and not config.ln_after else None
        if onto is not None and self._adds_onto(onto, h, columns, config, dropout):
            return self._bottleneck(adapter_input, columns, activation, per_example, dropout, config, onto=onto,
                                    onto_writable=writable and onto is h)
        delta = self._bottleneck(adapter_input, columns, activation, per_example, dropout, config).to(h.dtype)
        if config.is_parallel:
            return h + (self._norm(delta, columns, "ln_after", per_example) if config.ln_after else delta)
        if config.ln_after and config.adapter_residual_before_ln:
            return self._norm(delta + residual_after, columns, "ln_after", per_example)
        if config.ln_after:
            return self._norm(delta, columns, "ln_after", per_example) + residual_after
        return delta + residual_after

    def _adds_onto(self, onto, h, columns: dict, config, dropout: float) -> bool:
        """Whether the up projection can accumulate straight onto the residual: nothing (a scale, dropout, a gate, a
        dtype cast) comes between them."""
        return (onto.dtype == h.dtype == columns["up_weight"].dtype and "scale" not in columns
                and not config.use_gating and not (dropout and self.training))

    def _bottleneck(self, x, columns: dict, activation, per_example: bool, dropout: float, config,
                    onto: Optional[torch.Tensor] = None, onto_writable: bool = False) -> torch.Tensor:
        """``gate * dropout(s * up(f(down(LN_before(x)))))`` for every example (the columns may hold more than the
        config uses: a route table has the union of its adapters' tensors); ``onto + up(...)`` when ``onto`` is
        given (``_adds_onto``)."""
        dtype = columns["down_weight"].dtype
        x = self._cast_input_dtype(x, dtype)
        z = self._norm(x, columns, "ln_before", per_example) if config.ln_before else x
        z = _linear(z, columns["down_weight"], columns["down_bias"], per_example)
        z = _activate(z, activation)
        if onto is not None:
            if z.dtype == onto.dtype:
                return _linear_onto(onto, z, columns["up_weight"], columns["up_bias"], in_place=onto_writable)
            return onto + _linear(z, columns["up_weight"], columns["up_bias"], per_example).to(onto.dtype)
        z = _linear(z, columns["up_weight"], columns["up_bias"], per_example)
        if "scale" in columns:  # not in a route table's columns: folded into up_weight there
            z = z * _broadcast(columns["scale"], z, per_example)
        z = F.dropout(z, dropout, self.training)
        if config.use_gating:
            gate = torch.sigmoid(_linear(x, columns["gate_weight"], columns["gate_bias"], per_example))
            reduce = tuple(range(1, gate.dim() - 1))
            z = z * (gate.mean(dim=reduce, keepdim=True) if reduce else gate)
        return z

    def _norm(self, x, columns: dict, which: str, per_example: bool) -> torch.Tensor:
        weight, bias = columns[f"{which}_weight"], columns[f"{which}_bias"]
        normed = F.layer_norm(x, x.shape[-1:], eps=1e-5)
        return normed * _broadcast(weight, normed, per_example) + _broadcast(bias, normed, per_example)

    def _skip_block_residual(self, out, residual, settings: AdapterSettings, keep_own) -> torch.Tensor:
        """``original_ln_after=False``: the block must return ``out`` itself, without its residual / LayerNorm
        (``keep_own``: rows that keep the block's own computation)."""
        if settings.post_ln:
            self.context.replace_layer_norm_output(out, keep_own)
            return out
        if residual is None:
            raise RuntimeError("`original_ln_after=False` needs the block's residual input, which was not captured.")
        skipped = out - residual
        if keep_own is None:
            return skipped
        return torch.where(keep_own, out, skipped)

    def __repr__(self) -> str:
        return f"{self.adapter_kind.lower()}." + super().__repr__()


def _last_leaf(block):
    if isinstance(block, str):
        return block
    return _last_leaf(block.children[-1])


class FusionKind(AdapterKind):
    """An AdapterFusion entry (``fusion_of``): query, key and value maps over the hidden size, one route."""

    name = "fusion"
    tensors = ("fusion_query_weight", "fusion_query_bias", "fusion_key_weight", "fusion_key_bias",
               "fusion_value_weight")

    @classmethod
    def create(cls, config, sizes: Sizes) -> dict[str, torch.Tensor]:
        d = sizes.out_features
        return {"fusion_query_weight": torch.empty(1, d, d), "fusion_query_bias": torch.zeros(1, d),
                "fusion_key_weight": torch.empty(1, d, d), "fusion_key_bias": torch.zeros(1, d),
                "fusion_value_weight": torch.empty(1, d, d)}

    @classmethod
    def reset(cls, tensors, config, init_weights) -> None:
        with torch.no_grad():
            nn.init.normal_(tensors["fusion_query_weight"], std=0.02)  # AdapterHub's BERT-style init
            nn.init.normal_(tensors["fusion_key_weight"], std=0.02)
            tensors["fusion_value_weight"].copy_(torch.eye(tensors["fusion_value_weight"].shape[-1]).unsqueeze(0))
            nn.init.zeros_(tensors["fusion_query_bias"])
            nn.init.zeros_(tensors["fusion_key_bias"])

    @classmethod
    def projections(cls, tensors):
        raise TypeError("A fusion entry has no projections of its own; it runs through Fuse(...).")


def _broadcast(value: torch.Tensor, like: torch.Tensor, per_example: bool) -> torch.Tensor:
    """A (R, features) tensor shaped to multiply ``like`` (R = batch when per example, else the one route)."""
    value = value.to(like.dtype)
    if per_example:
        return value.view(value.shape[0], *([1] * (like.dim() - 2)), value.shape[-1])
    return value[0]


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], per_example: bool) -> torch.Tensor:
    if not per_example:
        return F.linear(x, weight[0], None if bias is None else bias[0])
    flat = x.reshape(x.shape[0], -1, x.shape[-1])
    out = torch.baddbmm(bias.unsqueeze(1), flat, weight.transpose(1, 2)) if bias is not None else torch.bmm(
        flat, weight.transpose(1, 2))
    return out.reshape(*x.shape[:-1], weight.shape[1])


def _linear_onto(onto: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                 in_place: bool = False) -> torch.Tensor:
    """``onto + x W^T + b`` with one weight per example, the matmul accumulating into the sum: one pass over the
    output fewer than adding a finished projection (and no new output when ``onto`` may be written: ``in_place``)."""
    bias = bias.view(bias.shape[0], *([1] * (onto.dim() - 2)), bias.shape[-1])
    out = onto.add_(bias) if in_place else (onto + bias).contiguous()
    out.view(x.shape[0], -1, weight.shape[1]).baddbmm_(x.reshape(x.shape[0], -1, x.shape[-1]), weight.transpose(1, 2))
    return out


def _writable(output, *inputs) -> bool:
    """Whether the adapters may update the wrapped module's output in place rather than copy it (one pass and one
    allocation fewer per layer): only without gradients (no graph may have kept it for a backward), and only a
    plain contiguous tensor with storage of its own, exactly its size, so neither a view into a longer-lived buffer
    (a cache) nor anything the module was called with or returned beside it."""
    if torch.is_grad_enabled() or type(output) is not torch.Tensor or not output.is_contiguous():
        return False
    storage = output.untyped_storage()
    if storage.nbytes() != output.numel() * output.element_size():
        return False
    pointer = storage.data_ptr()
    return not any(isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() == pointer for t in inputs)


def _activate(z: torch.Tensor, activation) -> torch.Tensor:
    """One activation for all, or (code per example, the names they index): at most a few distinct kinds."""
    if isinstance(activation, str):  # `z` is a projection's fresh output: overwritten when no backward reads it
        return get_activation(activation, in_place=not torch.is_grad_enabled())(z)
    codes, names = activation
    out = z
    for code, kind in enumerate(names):  # the few allowed non-linearities, never the examples
        chosen = (codes == code).view(-1, *([1] * (z.dim() - 1)))
        out = torch.where(chosen, get_activation(kind)(z), out)
    return out


def grow_routes(layer: AdapterLayer, adapter_name: str, config, routes: int, tasks) -> None:
    """Append ``routes`` fresh routes (new tasks) to an adapter; existing routes keep their exact values."""
    settings = layer.settings[adapter_name]
    own = layer.tensors_of(adapter_name, own_only=True)
    grown = settings.kind.grow({k: v.data for k, v in own.items() if k not in EXTRA_TENSORS}, settings.config,
                               routes)
    for tensor in EXTRA_TENSORS:
        if tensor in own:
            old = own[tensor].data
            fill = torch.zeros if tensor in ("gate_bias", "ln_before_bias", "ln_after_bias") else torch.ones
            fresh = fill((routes, *old.shape[1:]), dtype=old.dtype, device=old.device)
            if tensor == "gate_weight":
                nn.init.normal_(fresh, std=0.02)
            grown[tensor] = torch.cat([old, fresh])
    for tensor, value in grown.items():
        layer.container(tensor)[adapter_name] = nn.Parameter(value)
    layer.settings[adapter_name] = dataclasses.replace(settings, routes=settings.routes + routes, tasks=tasks)
    layer.set_adapter(layer.active_adapters, inference_mode=config.inference_mode)


__all__ = ["AdapterLayer", "AdapterSettings", "BlockContext", "MERGE_ERROR", "grow_routes", "projection_dims",
           "kaiming_down_zero_up"]
