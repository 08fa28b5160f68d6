"""The tuner base: finds the targets of a config, swaps them for adapted layers, and routes every call.

Tuner types differ only in their config and layer class; everything here is shared. Adding the second and later
adapters with the same targets as an existing one skips PEFT's scan of the whole model (which grows with every
adapter held), so the 512th adapter costs what the first did; any failure while adding or loading leaves the model
exactly as it was.
"""

from __future__ import annotations

import re
import warnings
from contextlib import contextmanager
from typing import Optional

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, _get_submodules, check_target_module_exists
from peft.utils.error import NoMatchingPeftModuleError
from peft.utils.other import set_additional_trainable_modules
from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from ...discovery import DiscoveryError, discover
from ...target_modules import ADAPTER_POSITIONS, AdapterPositions, block_context_for, input_source_for
from . import legacy
from .config import AdapterConfigBase, TargetingConfig
from .kinds import kind_of
from .layer import MERGE_ERROR, AdapterLayer, BlockContext
from .routing import BASE_ROUTE, CallRoute, Routing, RoutingState, adapter_codes, carry_route, task_codes

# checks run on every new or loaded adapter config: (config, model) -> None or raise; other parts of the package (the
# compression wing's layer map) register theirs here, so the tuners import nothing of them
NEW_ADAPTER_CHECKS: list = []
ADAPTER_NAME_RULE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*$")
RESERVED_NAMES = (BASE_ROUTE,)
BATCH_INPUTS = ("input_ids", "inputs_embeds", "pixel_values", "input_values", "input_features")
# keyword arguments only `generate` takes: PeftModel calls the same hook for forward and generate
GENERATION_ARGS = {"generation_config", "max_new_tokens", "max_length", "num_beams", "num_return_sequences",
                   "do_sample", "min_new_tokens"}


# names PEFT gives the parts of a task head's wrapper (modules_to_save): an adapter of that name would collide
WRAPPER_NAMES = ("modules_to_save", "original_module", "base_layer", "base_model")


def check_adapter_name(name) -> None:
    """Adapter names become folder names and state-dict key parts: plain identifiers only, and none that PEFT's key
    remapping would read as a tensor container (``bottleneck_down`` holds the prefix ``bottleneck_``)."""
    if not isinstance(name, str) or not ADAPTER_NAME_RULE.match(name) or name in RESERVED_NAMES:
        raise ValueError(
            f"Adapter name {name!r} is not allowed: use letters, digits, '_' and '-' only (no dots, path separators, "
            f"spaces or empty names), not starting with '-', and not the reserved {list(RESERVED_NAMES)}."
        )
    if hasattr(nn.ParameterDict, name) or hasattr(nn.ModuleDict, name):
        raise ValueError(
            f"Adapter name {name!r} is not allowed: it is the name of a method or attribute of torch's ParameterDict / "
            "ModuleDict, which hold every adapter's tensors by name (e.g. 'copy', 'keys', 'update', 'to', 'train')."
        )
    prefixes = tuner_prefixes()
    clash = next((p for p in prefixes if p in name), None) or next((w for w in WRAPPER_NAMES if w in name), None)
    if clash is not None:
        raise ValueError(
            f"Adapter name {name!r} is not allowed: it contains {clash!r}. An adapter's name must not contain a "
            f"tensor-container prefix of this package ({sorted(prefixes)}) or a name PEFT gives a task head's "
            f"wrapper ({list(WRAPPER_NAMES)}): PEFT's loader would read the saved keys wrongly."
        )


def tuner_prefixes() -> set[str]:
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    return {t.prefix for t in PEFT_TYPE_TO_TUNER_MAPPING.values() if issubclass(t, AdapterTuner) and t.prefix}


class AdapterTuner(BaseTuner):
    """Shared tuner of every adapter type here. Subclasses set ``prefix`` and ``tuner_layer_cls``."""

    prefix: str = ""
    tuner_layer_cls = AdapterLayer
    target_module_mapping: dict = {}  # positions come from `target_modules.ADAPTER_POSITIONS` by placement
    model_card_tags = ("peft-bottleneck",)

    def __init__(self, model, peft_config, adapter_name, **kwargs) -> None:
        self.__dict__["routing_state"] = RoutingState()
        self.__dict__["_shared"] = {}  # adapter -> the layer that registered its kind's model-wide tensors
        self.__dict__["_targets"] = {}  # adapter -> (targeting signature, keys it adapted)
        self.__dict__["_discovery"] = None  # what discovery read off the model (or why it could not), probed once
        super().__init__(model, peft_config, adapter_name, **kwargs)

    # -- targets --------------------------------------------------------------------------------------------------

    def _post_injection_hook(self, model, config, adapter_name) -> None:
        # name the type in the model card PEFT writes on save: a process that never imported us cannot resolve it
        if hasattr(model, "add_model_tags"):
            from ... import __version__

            model.add_model_tags([*self.model_card_tags, f"peft-bottleneck-{__version__}",
                                  config.peft_type.value.lower()])

    def _check_new_adapter_config(self, config) -> None:
        super()._check_new_adapter_config(config)
        name = next((n for n, c in self.peft_config.items() if c is config), None)
        check_adapter_name(name)
        fused = getattr(config, "fusion_of", None)
        missing = [n for n in fused or () if n not in self.peft_config or n == name]
        if missing:
            raise ValueError(f"`fusion_of` of fusion {name!r} names adapters the model does not have: {missing} "
                             f"(it has {sorted(n for n in self.peft_config if n != name)}); load them first.")
        for check in NEW_ADAPTER_CHECKS:
            check(config, self.model)

    def _prepare_adapter_config(self, peft_config, model_config):
        adapter_config = self.adapter_config(peft_config)
        default_positions = peft_config.target_modules is None
        positions = self.positions(peft_config, required=default_positions)
        if default_positions:
            targets, excluded = adapter_config.default_targets(positions)
            if adapter_config.is_parallel and adapter_config.input_from is None:
                adapter_config.input_from = dict(positions.ffn_input_from)
            peft_config.target_modules = set(targets)
            if excluded:
                if isinstance(peft_config.exclude_modules, str):
                    raise ValueError(
                        "`exclude_modules` as a regex cannot be combined with the default placement on this "
                        f"architecture; pass `target_modules` explicitly or exclude_modules as a list (the placement "
                        f"must also exclude {excluded})."
                    )
                peft_config.exclude_modules = set(peft_config.exclude_modules or ()) | set(excluded)
        if adapter_config.original_ln_before is None:
            # the preset applies where the block of every default position has a known residual and LayerNorm
            sited = default_positions and bool(targets) and all(t in positions.sites for t in targets)
            adapter_config.original_ln_before = adapter_config.preset_original_ln_before() and sited
        return peft_config

    # -- positions: the table's override for the model type, else found from the model ---------------------------

    def _model_type(self) -> Optional[str]:
        return getattr(getattr(self.model, "config", None), "model_type", None)

    def discovered(self):
        """What discovery read off this model (``discovery.Discovered``), or the DiscoveryError saying why it could
        not; probed once per tuner, before its first adapter is injected."""
        if self.__dict__["_discovery"] is None:
            try:
                self.__dict__["_discovery"] = discover(self.model)
            except DiscoveryError as error:
                self.__dict__["_discovery"] = error
            except Exception as error:  # noqa: BLE001 - explicit targets still work; default ones say why not
                self.__dict__["_discovery"] = DiscoveryError(
                    f"Reading the adapter positions off {type(self.model).__name__} failed ({type(error).__name__}: "
                    f"{error}). Pass `target_modules=[...]`, or register the positions with "
                    "`peft_bottleneck.register_positions(model_type, AdapterPositions(...))`.")
        return self.__dict__["_discovery"]

    def positions(self, peft_config, required: bool = False) -> Optional[AdapterPositions]:
        """The adapter positions for this model: the table's entry for its model type, else discovered (the towers
        ``peft_config.towers`` selects). ``required``: raise the reason when there are none, else return None."""
        table = ADAPTER_POSITIONS.get(self._model_type() or "")
        if table is not None:
            return table
        if not hasattr(self.model, "config") and not required:
            return None  # a plain torch module with explicit targets: nothing to probe
        found = self.discovered()
        if isinstance(found, DiscoveryError):
            if required:
                raise DiscoveryError(str(found)) from None
            return None
        return found.positions(getattr(peft_config, "towers", None))

    def _measured_features(self, key: str, module) -> Optional[tuple[int, int]]:
        """(in, out) features discovery measured on a target that is not a projection itself (a mixture-of-experts
        block sizes its adapter from the hidden size, not from its router)."""
        if isinstance(module, (nn.Linear, Conv1D)) or self._model_type() in ADAPTER_POSITIONS:
            return None
        found = self.__dict__["_discovery"]
        return None if found is None or isinstance(found, DiscoveryError) else found.features.get(key)

    @staticmethod
    def adapter_config(peft_config) -> AdapterConfigBase:
        """The config of the adapters themselves (the controller nests it)."""
        return peft_config

    def _check_target_module_exists(self, peft_config, key: str):
        found = check_target_module_exists(peft_config, key)
        if found and not _is_excluded(found):
            _refuse_unfit_target(self.model, key)
        if found and peft_config.leave_out and not _is_excluded(found):
            index = _layer_index(key)
            if index is not None and index in peft_config.leave_out:
                return False
        return found

    def layer_class(self, peft_config, current_key: str) -> type:
        return self.tuner_layer_cls

    def layer_kwargs(self, peft_config, adapter_name: str, current_key: str) -> dict:
        """Whether the adapter at ``current_key`` transforms the module's input; for every layer after the first that
        gets the adapter, the layer holding its kind's model-wide tensors."""
        config = self.adapter_config(peft_config)
        kwargs = {"on_input": _matches(current_key, config.input_modules)}
        if isinstance(getattr(config, "reduction_factor", None), dict):
            kwargs["layer_index"] = self._adapterhub_layer_index(current_key)
        if not kind_of_layer_shares(config):
            return kwargs
        owner = self._shared.get(adapter_name)
        return {**kwargs, "shared_owner": owner} if owner is not None else kwargs

    def _adapterhub_layer_index(self, key: str) -> Optional[int]:
        """The layer index AdapterHub gives ``key``'s block: its index in the stack, an encoder-decoder's decoder
        layers numbered after the encoder's."""
        index = _layer_index(key)
        config = getattr(self.model, "config", None)
        if index is None or not getattr(config, "is_encoder_decoder", False) or ".decoder." not in f".{key}":
            return index
        encoder_layers = next((getattr(config, n) for n in ("encoder_layers", "num_layers", "num_hidden_layers")
                               if isinstance(getattr(config, n, None), int)), 0)
        return index + encoder_layers

    def _attach_context(self, context: BlockContext, peft_config, current_key: str) -> None:
        config = self.adapter_config(peft_config)
        if not (config.is_parallel or config.needs_block_context):
            return
        positions = self.positions(peft_config)
        if config.is_parallel and context.input_source is None:
            others = (positions.attention_output + positions.ffn_output + positions.ffn_block) if positions else ()
            source = input_source_for(config.input_from, current_key, others)
            if source is not None:
                context.attach(input_source=self._source_module(source, current_key, config.input_from),
                               input_features=(self._measured_features(source, None) or (None,))[0])
        if config.needs_block_context:
            found = self.__dict__["_discovery"]
            why = f" ({found})" if isinstance(found, DiscoveryError) else ""
            residual_source, argument, layer_norm = block_context_for(self.model, positions, current_key, why)
            context.attach(residual_source=residual_source, residual_argument=argument, layer_norm=layer_norm)

    def _source_module(self, source_key: str, current_key: str, input_from: dict):
        try:
            return self.model.get_submodule(source_key)
        except AttributeError:
            raise ValueError(f"`input_from` ({input_from}) names {source_key!r} as the input of the parallel adapter "
                             f"at {current_key!r}, but the model has no such module.") from None

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key,
                            parameter_name=None):
        kwargs = self.layer_kwargs(peft_config, adapter_name, current_key)
        if isinstance(target, AdapterLayer):
            self._attach_context(target.context, peft_config, current_key)
            target.update_layer(adapter_name, peft_config, **kwargs)
            new_module = target
        else:
            context = BlockContext()
            self._attach_context(context, peft_config, current_key)
            layer_cls = self.layer_class(peft_config, current_key)
            try:
                new_module = layer_cls(target, adapter_name, peft_config, routing_state=self.routing_state,
                                       context=context, features=self._measured_features(current_key, target),
                                       **kwargs)
            except Exception:
                context.detach()
                raise
            self._replace_module(parent, target_name, new_module, target)
        if kind_of_layer_shares(self.adapter_config(peft_config)) and adapter_name not in self._shared:
            self._shared[adapter_name] = new_module  # the layer that made and registered the shared tensors
        self._targets.setdefault(adapter_name, (None, []))[1].append(current_key)

    def _replace_module(self, parent, child_name, new_module, child) -> None:
        if not hasattr(new_module, "base_layer"):
            # unloading: put the original module back as it was (PEFT's version assumes it has a `weight`, which
            # a wrapped block such as an MLP does not)
            setattr(parent, child_name, new_module)
            return
        super()._replace_module(parent, child_name, new_module, child)

    def _check_merge_allowed(self):
        raise ValueError(MERGE_ERROR.format(kind=self.tuner_layer_cls.adapter_kind))

    def set_adapter(self, adapter_name, inference_mode: bool = False) -> None:
        """Activate one adapter, or several (applied in turn: a Stack). A task head (``modules_to_save``) follows
        one adapter only: with several, the last one in the list that has its own copy of the head (PEFT's
        ``set_adapter`` refuses a list on a model with a task head)."""
        from peft.utils.other import AuxiliaryTrainingWrapper

        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        unknown = [n for n in names if n not in self.peft_config]
        if unknown or not names:
            raise ValueError(f"set_adapter: unknown adapter(s) {unknown or names}; the model has "
                             f"{sorted(self.peft_config)}.")
        for module in self.model.modules():
            if isinstance(module, AuxiliaryTrainingWrapper):
                held = [n for n in names if n in module._adapters]
                module.set_adapter(held[-1:], inference_mode=inference_mode)
            elif isinstance(module, AdapterLayer):
                module.set_adapter(adapter_name, inference_mode=inference_mode)
        holder = self._invertible()
        for name in getattr(holder, "settings", {}):
            holder[name].requires_grad_(name in names and not inference_mode)
        self.active_adapter = adapter_name

    def tuner_layers(self):
        return (module for module in self.model.modules() if isinstance(module, AdapterLayer))

    def _unload_and_optionally_merge(self, *args, **kwargs):
        for layer in self.tuner_layers():
            layer.context.detach()
        for name in list(getattr(self._invertible(), "settings", {})):
            self._remove_invertible(name)
        return super()._unload_and_optionally_merge(*args, **kwargs)

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self._remove_invertible(adapter_name)
        self._shared.pop(adapter_name, None)
        self._targets.pop(adapter_name, None)

    # -- invertible adapters (MAD-X): on the embedding output, inverted before the output embeddings ----------------

    def _invertible(self):
        # owned by the tuner, as PEFT's VeRA owns its shared matrices: PEFT saves and loads the tuner's own containers
        return self._modules.get(self.prefix + "invertible")

    def _add_invertible(self, adapter_name: str, peft_config) -> None:
        config = self.adapter_config(peft_config)
        if not getattr(config, "inv_adapter", None):
            return
        if getattr(peft_config, "tasks", None):
            raise ValueError("`inv_adapter` is per adapter name: a task-routed controller cannot hold one. Add the "
                             "invertible (language) adapter as an adapter of its own and stack the controller on it.")
        holder = self._invertible()
        if holder is None:
            holder = self._attach_invertible()
        found = self.discovered()
        if isinstance(found, DiscoveryError):
            raise ValueError(f"`inv_adapter` needs the model's embedding output (the input of its first block): "
                             f"{found}") from None
        first = f"{self.__dict__['_inv_first_block']}"
        holder.add(adapter_name, config.inv_adapter, found.features[first][0], config.inv_adapter_reduction_factor,
                   config.non_linearity)
        trainable = adapter_name in self.active_adapters and not peft_config.inference_mode
        holder[adapter_name].requires_grad_(trainable)
        holder[adapter_name].to(next(self.model.parameters()).device)

    def _attach_invertible(self):
        from .invertible import InvertibleAdapters

        found = self.discovered()
        if isinstance(found, DiscoveryError):
            raise ValueError(f"`inv_adapter` needs the model's embedding output (the input of its first block): "
                             f"{found}") from None
        first_key = f"{found.chosen_towers(None)[0].path}.0"  # the text tower (an encoder-decoder's encoder)
        holder = InvertibleAdapters(self)
        self.add_module(self.prefix + "invertible", holder)

        self.model.get_submodule(first_key).register_forward_pre_hook(holder.on_embeddings, with_kwargs=True)
        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        if isinstance(head, nn.Module):
            head.register_forward_pre_hook(holder.before_head)
        self.__dict__["_inv_first_block"] = first_key
        return holder

    def _remove_invertible(self, adapter_name: str) -> None:
        holder = self._invertible()
        if holder is None:
            return
        holder.remove(adapter_name)
        if not holder.settings:
            # found by what they call, not by handles: a deep copy of the model keeps its own hooks bound to its own
            # container, and handles would point at the original's
            for module in self.model.modules():
                for key, hook in list(module._forward_pre_hooks.items()):
                    if getattr(hook, "__self__", None) is holder:
                        del module._forward_pre_hooks[key]
                        module._forward_pre_hooks_with_kwargs.pop(key, None)
            del self._modules[self.prefix + "invertible"]

    # -- adding adapters: transactional, and flat in the number held ------------------------------------------

    def inject_adapter(self, model, adapter_name, autocast_adapter_dtype=True, low_cpu_mem_usage=False,
                       state_dict=None):
        keep_4bit_weights_in_their_saved_layout(model)
        before = {id(m) for m in model.modules() if isinstance(m, BaseTunerLayer)}
        try:
            if not self._inject_like_an_existing_adapter(model, adapter_name, autocast_adapter_dtype,
                                                         low_cpu_mem_usage, state_dict):
                self._targets.pop(adapter_name, None)
                super().inject_adapter(model, adapter_name, autocast_adapter_dtype=autocast_adapter_dtype,
                                       low_cpu_mem_usage=low_cpu_mem_usage, state_dict=state_dict)
            self._targets[adapter_name] = (self._signature(self.peft_config[adapter_name]),
                                           self._targets.get(adapter_name, (None, []))[1])
            self._shared.pop(adapter_name, None)  # only needed while this adapter's layers are made
            self._add_invertible(adapter_name, self.peft_config[adapter_name])
            if autocast_adapter_dtype:
                keep_saved_modules_in_fp32(model, adapter_name)
        except BaseException as error:
            self._remove_invertible(adapter_name)
            self.remove_partial_adapter(model, adapter_name, before)
            leave_out = getattr(self.peft_config.get(adapter_name), "leave_out", None)
            if isinstance(error, NoMatchingPeftModuleError) and leave_out:
                raise ValueError(f"`leave_out={sorted(leave_out)}` leaves out every layer the targets match; "
                                 "leave out fewer layers.") from error
            raise

    def remove_partial_adapter(self, model, adapter_name: str, layers_before: set) -> None:
        """Undo a half-done injection: drop the adapter from every layer, unwrap layers made for it."""
        for name, module in list(model.named_modules()):
            if not isinstance(module, AdapterLayer):
                continue
            if adapter_name in module.settings or any(adapter_name in getattr(module, c) for c in
                                                      module.adapter_layer_names):
                for container in (getattr(module, c) for c in (*module.adapter_layer_names, "settings")):
                    if adapter_name in container:
                        del container[adapter_name]
                for key in [k for k in module.shared_refs if k[1] == adapter_name]:
                    del module.shared_refs[key]
            if id(module) not in layers_before and not module.settings:
                module.context.detach()
                parent, _, child_name = _get_submodules(model, name)
                setattr(parent, child_name, module.base_layer)
        self._shared.pop(adapter_name, None)
        self._targets.pop(adapter_name, None)
        for key in [k for k in self.targeted_module_names if _get_module_or_none(model, k) is None]:
            self.targeted_module_names.remove(key)

    def _signature(self, peft_config) -> tuple:
        config = self.adapter_config(peft_config)
        as_key = lambda v: tuple(sorted(v)) if isinstance(v, (set, list)) else v  # noqa: E731
        return (type(peft_config), as_key(peft_config.target_modules), as_key(peft_config.exclude_modules),
                as_key(getattr(peft_config, "towers", None)),
                as_key(peft_config.layers_to_transform), as_key(peft_config.layers_pattern),
                as_key(peft_config.leave_out), tuple(sorted((config.input_from or {}).items())),
                config.needs_block_context, getattr(peft_config, "output_adapter", None) is not None)

    def _inject_like_an_existing_adapter(self, model, adapter_name, autocast_adapter_dtype, low_cpu_mem_usage,
                                         state_dict) -> bool:
        if low_cpu_mem_usage or state_dict is not None or not self._targets:
            return False
        peft_config = self.peft_config[adapter_name]
        self._check_new_adapter_config(peft_config)
        self._prepare_adapter_config(peft_config, self.get_model_config(model))
        signature = self._signature(peft_config)
        keys = next((k for s, k in self._targets.values() if s == signature and k), None)
        if keys is None:
            return False
        for key in keys:
            parent, target, target_name = _get_submodules(model, key)
            self._create_and_replace(peft_config, adapter_name, target, target_name, parent, current_key=key)
        self._cast_adapter_dtype(adapter_name=adapter_name, autocast_adapter_dtype=autocast_adapter_dtype)
        set_additional_trainable_modules(model=model, peft_config=peft_config,
                                         model_config=BaseTuner.get_model_config(self), adapter_name=adapter_name,
                                         activate_adapter=adapter_name in self.active_adapters)
        return True

    # -- loading ------------------------------------------------------------------------------------------------

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        # the invertible adapters' container is keyed by adapter name with a coupling block below it; PEFT's default
        # only removes a name followed by one more part (saving and loading both map keys through this)
        container = f"{cls.prefix}invertible.{adapter_name}."
        if container in key:
            return key.replace(container, f"{cls.prefix}invertible.", 1)
        return super()._remove_adapter_name_from_key(key, adapter_name)

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        state_dict = legacy.convert_llm_adapters(legacy.convert_state_dict(state_dict, cls.prefix, config), cls.prefix)
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        check_adapter_state_dict(model, config, adapter_name, remapped)
        return remapped

    # -- routing ------------------------------------------------------------------------------------------------

    @contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs):
        # PeftModel wraps every forward and generate in this (and strips `adapter_names` before calling on)
        repeat = _generation_repeat(self.model, kwargs) if GENERATION_ARGS & set(kwargs) else 1
        with self.routed(kwargs.get("adapter_names"), kwargs.get("task"), kwargs, repeat=repeat,
                         composition=kwargs.get("composition")):
            yield

    def forward(self, *args, task=None, adapter_names=None, composition=None, **kwargs):
        with self.routed(adapter_names, task, kwargs, composition=composition):
            return self.model(*args, **self._replicated(kwargs))

    def generate(self, *args, task=None, adapter_names=None, composition=None, **kwargs):
        with self.routed(adapter_names, task, kwargs, repeat=_generation_repeat(self.model, kwargs),
                         composition=composition):
            return self.model.generate(*args, **self._replicated(kwargs))

    def _replicated(self, inputs: dict) -> dict:
        """A Parallel composition runs each child on its own copy of the batch: the inputs, copied in order."""
        from .blocks import parallel_copies

        copies = parallel_copies(self.routing_state.active_composition)
        if copies == 1:
            return inputs
        batch = _batch_size(inputs)
        if batch is None:
            raise ValueError("A Parallel composition needs the batch as keyword inputs (input_ids=..., ...).")
        return {k: v.repeat(copies, *([1] * (v.dim() - 1))) if torch.is_tensor(v) and v.dim() > 0 and
                v.shape[0] == batch else v for k, v in inputs.items()}

    @contextmanager
    def routed(self, adapter_names, task, inputs: dict, repeat: int = 1, composition=None):
        """This call's route, for the layers it reaches and nothing else: set in this thread's / asyncio task's
        context for the call's duration (``RoutingState``), never on the model. The outermost call decides:
        PeftModel's forward hook routes, and the tuner's own forward inside it keeps that route. ``composition``: a
        block for this call only (else the model-wide ``compose()``; a ``with composing(model, block)`` around the
        call sets it too)."""
        state = self.routing_state
        outer = state.current
        if outer is not None and outer.depth:
            with state.entered(CallRoute(outer.routing, outer.composition, outer.depth + 1, outer.scratch)):
                yield
            return
        if composition is None and outer is not None:
            composition = outer.composition  # from composing(model, block)
        if composition is not None:
            composition = _checked_block(self, composition)
        routing = self.routing_for(adapter_names, task, _batch_size(inputs),
                                   composition if composition is not None else state.composition)
        route = CallRoute(None if routing is None else routing.with_repeat(repeat), composition, depth=1)
        if torch.is_grad_enabled():
            self._carry_route_into_checkpoints()
        with state.entered(route):
            yield

    def _carry_route_into_checkpoints(self) -> None:
        """Gradient-checkpointed blocks re-run in backward, perhaps in another thread: wrap their checkpoint function
        (set by ``gradient_checkpointing_enable``, before or after the adapters) so they re-run in their forward's
        context. Checks one attribute per block per call with gradients."""
        layers = self.__dict__.get("_checkpointed_layers")
        if layers is None:
            layers = [m for m in self.model.modules() if hasattr(m, "gradient_checkpointing")]
            self.__dict__["_checkpointed_layers"] = layers
        for layer in layers:
            func = layer.__dict__.get("_gradient_checkpointing_func")
            if func is not None and not getattr(func, "carries_route", False):
                layer._gradient_checkpointing_func = carry_route(func)

    def routing_for(self, adapter_names, task, batch_size: Optional[int], composition=None) -> Optional[Routing]:
        adapters = codes = None
        if adapter_names is not None and composition is not None:
            raise ValueError("`adapter_names` routes single adapters per example and cannot be combined with an "
                             "active composition; express it as BatchSplit(...) or call compose(model, None).")
        if adapter_names is not None:
            if self.training:
                raise ValueError(
                    "`adapter_names` routes a mixed batch at inference; call `model.eval()` first (train each adapter "
                    "with `set_adapter`)."
                )
            adapters, codes = adapter_codes(adapter_names, self.peft_config.keys())
            _check_batch(len(adapter_names), batch_size, "adapter_names")
        routed = [n for n in (adapters or self.active_adapters) if n in self.peft_config and
                  getattr(self.peft_config[n], "tasks", None)]
        tasks, t_codes, whole_batch = self._task_routing(routed, task, batch_size)
        if codes is None and t_codes is None:
            return None
        return Routing(adapters, codes, tasks, t_codes, whole_batch=whole_batch)

    def _task_routing(self, routed: list[str], task, batch_size):
        if not routed:
            if task is not None:
                raise ValueError(f"`task=` was given, but no active adapter routes by task (active: "
                                 f"{self.active_adapters}).")
            return None, None, False
        configs = [self.peft_config[n] for n in routed]
        tasks = tuple(configs[0].tasks)
        if any(tuple(c.tasks) != tasks for c in configs[1:]):
            raise ValueError(f"The task-routed adapters {routed} have different task lists; route one at a time.")
        if task is None and self._adapters_off():
            return None, None, False
        if task is None:
            default = configs[0].default_task
            if default is None:
                if all(c.routed_task_count() == 1 for c in configs):
                    return None, None, False
                raise ValueError(
                    f"This adapter routes by task ({list(tasks)}): pass `task=` to forward/generate (a task name, a "
                    "list with one name per example, or a LongTensor of task indices), or set `default_task` in the "
                    "config."
                )
            task = default
        whole_batch = isinstance(task, str) or (isinstance(task, int) and not isinstance(task, bool)) or (
            isinstance(task, torch.Tensor) and task.dim() == 0)
        codes = task_codes([task] if whole_batch and not isinstance(task, torch.Tensor) else
                           (task.reshape(1) if whole_batch else task), tasks)
        if not whole_batch:
            _check_batch(codes.shape[0], batch_size, "task")
        return tasks, codes, whole_batch

    def _adapters_off(self) -> bool:
        layers = list(self.tuner_layers())
        return bool(layers) and all(layer.disable_adapters for layer in layers)


def keep_4bit_weights_in_their_saved_layout(model) -> None:
    """bitsandbytes (0.50) repacks a 4-bit weight for its CPU kernel at the first no-grad forward, and its
    ``state_dict()`` unpacks it again inexactly: after evaluate-then-save (the Trainer's rhythm) the base computes
    something else (logits off by 0.2 on a tiny Llama). A model with adapters keeps its 4-bit weights as loaded: CPU
    inference takes the dequantizing path training takes, the same numbers. A weight repacked before the adapter
    came cannot be restored; say so."""
    repacked = []
    for name, module in model.named_modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            if getattr(getattr(module.weight, "quant_state", None), "packing_format_for_cpu", False):
                repacked.append(name)
    if repacked:
        warnings.warn(
            f"{len(repacked)} 4-bit layers (e.g. {repacked[0]!r}) ran a no-grad CPU forward before this adapter was "
            "added, and bitsandbytes repacked their weights; its state_dict() unpacks them inexactly, so saving or "
            "loading now changes the base's outputs. Add adapters to a freshly loaded 4-bit base.", stacklevel=3)


def keep_saved_modules_in_fp32(model, adapter_name: str) -> None:
    """The trained copies of ``modules_to_save`` (a new classifier head) in float32 on a half-precision base, as
    PEFT's ``autocast_adapter_dtype`` keeps adapters: an fp16 head goes NaN after its first optimizer step. They
    compute in float32 and hand back the model's dtype."""
    from peft.utils.other import ModulesToSaveWrapper

    half = (torch.float16, torch.bfloat16)
    for wrapper in model.modules():
        if not isinstance(wrapper, ModulesToSaveWrapper) or adapter_name not in wrapper.modules_to_save:
            continue
        copy = wrapper.modules_to_save[adapter_name]
        if not any(p.dtype in half for p in copy.parameters()):
            continue
        copy.float()
        copy.register_forward_pre_hook(_inputs_to_fp32, with_kwargs=True)
        copy.register_forward_hook(_output_to_input_dtype, with_kwargs=True)


def _inputs_to_fp32(module, args, kwargs):
    module.__dict__["_caller_dtype"] = next((a.dtype for a in args if torch.is_tensor(a) and a.is_floating_point()),
                                            None)
    cast = lambda v: v.float() if torch.is_tensor(v) and v.is_floating_point() else v  # noqa: E731
    return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}


def _output_to_input_dtype(module, args, kwargs, output):
    dtype = module.__dict__.get("_caller_dtype")
    if dtype is not None and torch.is_tensor(output) and output.is_floating_point():
        return output.to(dtype)
    return output


def check_adapter_state_dict(model, config, adapter_name: str, state_dict: dict) -> None:
    """Every tensor of the adapter present with its shape, and nothing else: a key naming a base-model weight (or
    anything outside the adapter and its declared ``modules_to_save``) is refused, not loaded."""
    from peft.tuners.tuners_utils import _filter_state_dict_by_key_prefixes, _get_tuner_state_dict_key_prefixes
    from peft.utils.other import AuxiliaryTrainingWrapper

    model_state = model.state_dict()
    prefix = "base_model.model." if any(k.startswith("base_model.model.") for k in model_state) else ""
    state_dict = {k if k in model_state or not prefix else k: v for k, v in state_dict.items()}
    expected = _filter_state_dict_by_key_prefixes(model_state, _get_tuner_state_dict_key_prefixes(
        model, adapter_name=adapter_name))
    auxiliary = [n for n, m in model.named_modules() if isinstance(m, AuxiliaryTrainingWrapper)]
    trains_biases = getattr(config, "bias", "none") != "none"
    unexpected, wrong_shape = [], []
    for key, value in state_dict.items():
        model_key = key if key in model_state else key.removeprefix("base_model.model.")
        if model_key in expected:
            if tuple(value.shape) != tuple(model_state[model_key].shape):
                wrong_shape.append(f"{key}: {tuple(value.shape)} in the file, {tuple(model_state[model_key].shape)} "
                                   "in the model")
            continue
        if any(model_key.startswith(a + ".") for a in auxiliary) or (trains_biases and model_key.endswith(".bias")
                                                                       and model_key in model_state):
            continue
        unexpected.append(key)
    missing = sorted(k for k in expected if k not in state_dict and "base_model.model." + k not in state_dict
                     and k.removeprefix("base_model.model.") not in state_dict)
    problems = []
    if missing:
        problems.append(f"{len(missing)} adapter tensors are missing (e.g. {missing[:3]})")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} have the wrong shape (e.g. {wrong_shape[:2]})")
    if unexpected:
        problems.append(f"{len(unexpected)} tensors are not this adapter's (e.g. {sorted(unexpected)[:3]}); loading "
                        "them would overwrite weights outside the adapter")
    if problems:
        raise ValueError(f"The weights of adapter {adapter_name!r} do not fit the model: " + "; ".join(problems) + ".")


def kind_of_layer_shares(config) -> bool:
    return not getattr(config, "fusion_of", None) and kind_of(config).has_shared(config)


def _matches(key: str, names) -> bool:
    return bool(names) and any(key == n or key.endswith("." + n) for n in names)


def _is_excluded(found) -> bool:
    return type(found).__name__ == "_ExcludedModule"


def _refuse_unfit_target(model, key: str) -> None:
    """A target must be a projection or a block of them, not inside another target, not the embeddings or a whole
    model: their inputs are token ids and their outputs not a hidden state."""
    module, path = model, []
    for atom in key.split("."):
        if isinstance(module, AdapterLayer):  # PEFT skips the insides of layers wrapped before this call
            raise ValueError(f"`target_modules` matches both {'.'.join(path)!r} and {key!r} inside it: an adapter "
                             "wraps one module, so match projections or blocks that do not contain each other.")
        module, path = getattr(module, atom), [*path, atom]
    if isinstance(module, PreTrainedModel) or any(isinstance(m, nn.Embedding) for m in module.modules()):
        raise ValueError(f"`target_modules` matches {key!r} ({type(module).__name__}), which is a whole model or "
                         "holds embeddings: match linear layers (e.g. 'output.dense') or blocks made of them.")


def _layer_index(key: str) -> Optional[int]:
    match = re.search(r"\.(\d+)\.", key)
    return int(match.group(1)) if match else None


def _get_module_or_none(model, key):
    try:
        return model.get_submodule(key)
    except AttributeError:
        return None


def _checked_block(tuner, block):
    """A per-call composition: a block (or one adapter name) over adapters the model has."""
    from .blocks import Block, Stack

    if isinstance(block, str):
        block = Stack(block)
    if not isinstance(block, Block):
        raise TypeError(f"`composition` takes a block (Stack, Average, Parallel, BatchSplit, Fuse) or an adapter name, "
                        f"got {block!r}.")
    missing = [n for n in block.leaves() if n not in tuner.peft_config]
    if missing:
        raise ValueError(f"`composition` names adapters the model does not have: {missing}; it has "
                         f"{sorted(tuner.peft_config)}.")
    return block


def _batch_size(inputs: dict) -> Optional[int]:
    for name in BATCH_INPUTS:
        value = inputs.get(name)
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    return None


def _check_batch(routed: int, batch_size: Optional[int], field: str) -> None:
    if batch_size is not None and routed != batch_size:
        raise ValueError(f"`{field}` has {routed} entries but the batch has {batch_size} examples: pass exactly one "
                         f"per example.")


def _generation_repeat(model, kwargs: dict) -> int:
    """How many rows ``generate`` makes of each example (beams x returned sequences)."""
    config = kwargs.get("generation_config") or getattr(model, "generation_config", None)
    beams = kwargs.get("num_beams", getattr(config, "num_beams", 1)) or 1
    returned = kwargs.get("num_return_sequences", getattr(config, "num_return_sequences", 1)) or 1
    return int(max(beams, 1) * max(returned, 1))


__all__ = ["AdapterTuner", "TargetingConfig", "check_adapter_name"]
