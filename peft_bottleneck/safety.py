"""Loads that leave nothing half-done and saves that never destroy the adapter already on disk.

PEFT registers an adapter before it reads the weights and writes ``save_pretrained`` files in place, so a failure
in between damages the model or the folder (its LoRA fails the same ways). For this package's adapter types the
three load paths and ``save_pretrained`` are wrapped (other PEFT types pass straight through):

- ``PeftModel.from_pretrained``, ``PeftModel.load_adapter`` and transformers' ``load_adapter``: on any failure the
  adapter is removed again, every layer made for it is unwrapped, and the model, its ``peft_config`` and its state
  dict are as before; the error names the source. The weights themselves are checked when PEFT hands them to our
  tuner (``tuners.base.model``): a missing adapter tensor, a wrong shape, or a key outside the adapter's own
  tensors and declared ``modules_to_save`` is an error.
- ``PeftModel.save_pretrained``: everything is written to a temporary folder inside the target first; only when it
  is complete are the files moved into place, the old ones kept aside until then and put back if anything fails
  (an exception or a KeyboardInterrupt): the folder holds the old adapter or the new one, whole.
"""

from __future__ import annotations

import copy
import functools
import os
import shutil
import tempfile
from pathlib import Path

from peft import PeftModel
from transformers.integrations.peft import PeftAdapterMixin

from .tuners.base.layer import AdapterLayer
from .tuners.base.model import AdapterTuner

WRAPPED = "__peft_bottleneck_safe__"


class AdapterLoadError(ValueError):
    """Loading an adapter failed; the model was left exactly as it was."""


def _is_ours(config) -> bool:
    from .tuners.base.kinds import registered_configs
    from .tuners.controller import AdapterControllerConfig

    return isinstance(config, (AdapterControllerConfig, *registered_configs()))


UNREADABLE = "unreadable"  # the folder's adapter type could not be read: guard the load all the same


def _peft_type_of(model_id, subfolder=None, **kwargs):
    from peft.config import PeftConfig

    try:
        return PeftConfig._get_peft_type(model_id, subfolder=subfolder, **{k: v for k, v in kwargs.items() if k in (
            "revision", "cache_dir", "token", "local_files_only")})
    except Exception:  # noqa: BLE001 - a load we cannot classify is guarded, never passed through unguarded
        return UNREADABLE


def _our_type(peft_type) -> bool:
    if peft_type == UNREADABLE:
        return True
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    from peft.utils import PeftType

    try:
        config_cls = PEFT_TYPE_TO_CONFIG_MAPPING[PeftType(peft_type)]
    except (KeyError, ValueError):
        return False
    from .tuners.base.config import TargetingConfig

    return issubclass(config_cls, TargetingConfig)


class Snapshot:
    """What a failed load must restore: the adapted layers of a module tree and their adapters, which adapters are
    active, the task heads' wrappers (``modules_to_save``: their copies, active copy and trainability), and the
    configs."""

    def __init__(self, root, peft_config_owner=None) -> None:
        from peft.utils.other import AuxiliaryTrainingWrapper

        self.root = root
        self.layers = {id(m): set(m.settings) for m in root.modules() if isinstance(m, AdapterLayer)}
        self.active = {id(m): (copy.copy(m._active_adapter), m._disable_adapters) for m in root.modules()
                       if isinstance(m, AdapterLayer)}
        self.wrappers = {id(m): (set(m.modules_to_save.keys()) if hasattr(m, "modules_to_save") else set(),
                                 set(m._adapters), copy.copy(m._active_adapter), m._disable_adapters,
                                 {n: p.requires_grad for n, p in m.named_parameters()})
                         for m in root.modules() if isinstance(m, AuxiliaryTrainingWrapper)}
        tuner = getattr(peft_config_owner, "base_model", None)
        self.tuner_active = copy.copy(getattr(tuner, "active_adapter", None)) if isinstance(tuner, AdapterTuner) \
            else None
        self.owner_active = copy.copy(getattr(peft_config_owner, "active_adapter", None)) if isinstance(
            peft_config_owner, PeftModel) else None
        self.owner = peft_config_owner
        self.config_names = set(getattr(peft_config_owner, "peft_config", {}) or {}) if peft_config_owner else None
        self.had_peft_config = hasattr(root, "peft_config")
        self.peft_config_loaded = getattr(root, "_hf_peft_config_loaded", None)

    def restore(self) -> None:
        self._restore_wrappers()
        for name, module in list(self.root.named_modules()):
            if not isinstance(module, AdapterLayer):
                continue
            before = self.layers.get(id(module))
            for adapter in [a for a in list(module.settings) if before is None or a not in before]:
                for container in (getattr(module, c) for c in (*module.adapter_layer_names, "settings")):
                    if adapter in container:
                        del container[adapter]
                for key in [k for k in module.shared_refs if k[1] == adapter]:
                    del module.shared_refs[key]
            if before is None:
                module.context.detach()
                parent_name, _, child = name.rpartition(".")
                parent = self.root.get_submodule(parent_name) if parent_name else self.root
                setattr(parent, child, module.base_layer)
        if self.owner is not None and self.config_names is not None:
            configs = getattr(self.owner, "peft_config", None)
            if isinstance(configs, dict):
                for name in [n for n in configs if n not in self.config_names]:
                    del configs[name]
        if not self.had_peft_config and hasattr(self.root, "peft_config") and not self.layers:
            try:
                del self.root.peft_config
            except AttributeError:
                pass
        if self.peft_config_loaded is not None or hasattr(self.root, "_hf_peft_config_loaded"):
            self.root._hf_peft_config_loaded = bool(self.peft_config_loaded)
        for module in self.root.modules():
            if isinstance(module, AdapterLayer) and id(module) in self.active:
                module._active_adapter, module._disable_adapters = self.active[id(module)]
        if self.tuner_active is not None:
            self.owner.base_model.active_adapter = self.tuner_active
        if self.owner_active is not None:
            self.owner.active_adapter = self.owner_active

    def _restore_wrappers(self) -> None:
        """Task heads: a wrapper the failed load made is unwrapped; an older one loses the copies the load added
        and gets back its active copy and trainability."""
        from peft.utils.other import AuxiliaryTrainingWrapper

        for name, module in list(self.root.named_modules()):
            if not isinstance(module, AuxiliaryTrainingWrapper):
                continue
            saved = self.wrappers.get(id(module))
            if saved is None:
                parent_name, _, child = name.rpartition(".")
                parent = self.root.get_submodule(parent_name) if parent_name else self.root
                setattr(parent, child, module.original_module)
                continue
            copies, adapters, active, disabled, trainable = saved
            for key in [k for k in getattr(module, "modules_to_save", {}).keys() if k not in copies]:
                del module.modules_to_save[key]
            module._adapters = set(adapters)
            module._active_adapter, module._disable_adapters = active, disabled
            for param_name, param in module.named_parameters():
                if param_name in trainable:
                    param.requires_grad_(trainable[param_name])


def _fail(error: BaseException, source) -> None:
    if isinstance(error, (KeyboardInterrupt, SystemExit)):
        raise error
    raise AdapterLoadError(f"Could not load the adapter from {source}: {type(error).__name__}: {error} "
                           "(the model was left as it was).") from error


def _known_type(peft_type, source) -> None:
    """A clear error for an adapter_config.json whose peft_type no installed PEFT method provides."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    from peft.utils import PeftType

    if peft_type is None or peft_type == UNREADABLE:
        return
    known = {t.value for t in PEFT_TYPE_TO_CONFIG_MAPPING}
    if peft_type not in known or peft_type not in PeftType.__members__:
        raise AdapterLoadError(f"{source}: adapter_config.json names peft_type {peft_type!r}, which no installed PEFT "
                               f"method provides (known: {sorted(known)}).")


def _from_pretrained(original):
    @functools.wraps(original)
    def from_pretrained(cls, model, model_id, *args, **kwargs):
        peft_type = _peft_type_of(model_id, kwargs.get("subfolder"), **kwargs)
        _known_type(peft_type, model_id)
        if not _our_type(peft_type):
            return original.__func__(cls, model, model_id, *args, **kwargs)
        snapshot = Snapshot(model, model)
        try:
            return original.__func__(cls, model, model_id, *args, **kwargs)
        except BaseException as error:
            snapshot.restore()
            _fail(error, model_id)

    return classmethod(from_pretrained)


def _load_adapter(original, owner_of, check_file: bool = False):
    @functools.wraps(original)
    def load_adapter(self, *args, **kwargs):
        model_id = kwargs.get("model_id", kwargs.get("peft_model_id", args[0] if args else None))
        peft_type = _peft_type_of(model_id, kwargs.get("subfolder"), **kwargs) if model_id is not None else None
        if model_id is not None:
            _known_type(peft_type, model_id)
        if model_id is None or not _our_type(peft_type):
            return original(self, *args, **kwargs)
        root, owner = owner_of(self)
        snapshot = Snapshot(root, owner)
        try:
            checked = check_weights_file(root, model_id, kwargs) if check_file else None
            result = original(self, *args, **kwargs)
            if check_file:
                check_loaded(root, kwargs.get("adapter_name") or "default", checked)
            return result
        except BaseException as error:
            snapshot.restore()
            _fail(error, model_id)

    return load_adapter


def check_weights_file(model, model_id, kwargs) -> dict:
    """Before transformers loads anything: the weights file is readable, holds tensors, and names no weight of the
    base model (which its loader would overwrite)."""
    from peft.utils import load_peft_weights

    download = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "subfolder") if kwargs.get(k) is not None}
    weights = load_peft_weights(str(model_id), device="cpu", **download)
    if not weights:
        raise ValueError(f"{model_id}: the adapter weights file holds no tensors.")
    from peft.config import PeftConfig

    saved = set(PeftConfig.from_pretrained(str(model_id), **download).modules_to_save or ())
    base_keys = set(model.state_dict())

    def declared(key: str) -> bool:  # a module the adapter trains as a whole (modules_to_save)
        parts = key.removeprefix("base_model.model.").split(".")
        return any(part in saved for part in parts[:-1])

    foreign = [k for k in weights if k.removeprefix("base_model.model.") in base_keys and not declared(k)]
    if foreign:
        raise ValueError(f"{model_id}: the weights file names weights of the base model ({sorted(foreign)[:3]}); "
                         "loading it would overwrite them.")
    return weights


def check_loaded(model, adapter_name: str, weights: dict) -> None:
    """After transformers loaded the adapter: every tensor it created came from the file (none left at its init)."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    config = model.peft_config[adapter_name]
    tuner = PEFT_TYPE_TO_TUNER_MAPPING[config.peft_type]
    tuner._remap_adapter_state_dict_for_load(model, config, adapter_name, dict(weights))


def _save_pretrained(original):
    @functools.wraps(original)
    def save_pretrained(self, save_directory, *args, **kwargs):
        if not any(_is_ours(c) for c in self.peft_config.values()) or os.path.isfile(save_directory):
            return original(self, save_directory, *args, **kwargs)
        target = Path(save_directory)
        target.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=target))
        try:
            original(self, str(staging), *args, **kwargs)
            if (staging / "README.md").exists():  # PEFT's template card (only the main process writes one)
                from .model_card import write_model_card

                write_model_card(staging, self)
            commit_files(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    return save_pretrained


def commit_files(staging: Path, target: Path) -> None:
    """Move every file of ``staging`` to the same place under ``target``; the files they replace are kept aside
    and put back if the move is interrupted, so ``target`` ends with the old set or the new one, whole."""
    new_files = [p for p in sorted(staging.rglob("*")) if p.is_file()]
    moved, aside = [], []
    backup = Path(tempfile.mkdtemp(prefix=".replaced-", dir=target))
    try:
        for source in new_files:
            relative = source.relative_to(staging)
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            if destination.exists():
                kept = backup / relative
                kept.parent.mkdir(parents=True, exist_ok=True)
                os.replace(destination, kept)
                aside.append((kept, destination))
            os.replace(source, destination)
            moved.append(destination)
    except BaseException:
        for destination in moved:
            destination.unlink(missing_ok=True)
        for kept, destination in aside:
            os.replace(kept, destination)
        raise
    finally:
        shutil.rmtree(backup, ignore_errors=True)


def _stacking_set_adapter(original):
    @functools.wraps(original)
    def set_adapter(self, adapter_name, inference_mode: bool = False):
        if isinstance(adapter_name, (list, tuple)) and isinstance(self.base_model, AdapterTuner):
            names = list(adapter_name)
            self.base_model.set_adapter(names, inference_mode=inference_mode)
            self.active_adapter = names[-1]  # PEFT looks its config up by one name; the tuner holds the stack
            return None
        return original(self, adapter_name, inference_mode=inference_mode)

    return set_adapter


def install() -> None:
    """Wrap the load and save paths once (idempotent), and let ``PeftModel.set_adapter`` take a list (a Stack) for
    this package's types (PEFT's own refuses a list: it looks the name up in a dict)."""
    if getattr(PeftModel, WRAPPED, False):
        return
    PeftModel.from_pretrained = _from_pretrained(PeftModel.from_pretrained)
    PeftModel.load_adapter = _load_adapter(PeftModel.load_adapter, lambda m: (m.base_model.model, m))
    PeftModel.save_pretrained = _save_pretrained(PeftModel.save_pretrained)
    PeftModel.set_adapter = _stacking_set_adapter(PeftModel.set_adapter)
    # transformers reads the weights with its own loader (not PEFT's, which our tuner checks): check the file here
    PeftAdapterMixin.load_adapter = _load_adapter(PeftAdapterMixin.load_adapter, lambda m: (m, m), check_file=True)
    setattr(PeftModel, WRAPPED, True)


__all__ = ["AdapterLoadError", "AdapterTuner", "commit_files", "install"]
