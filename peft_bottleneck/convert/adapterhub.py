"""AdapterHub (``adapters`` 1.x) bottleneck checkpoints to PEFT adapters of this package, computing the same outputs.

An AdapterHub adapter folder holds ``adapter_config.json`` (its ``BnConfig`` fields, the model type and class) and
``pytorch_adapter.bin`` or ``adapter.safetensors``; optionally a prediction head (``head_config.json`` and its
weights), which is reported and left out unless ``include_head`` is given. Architecture knowledge is the table
``LOCATIONS``: where AdapterHub keeps each adapter and which of our target modules that is.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from ..activations import ALLOWED_NON_LINEARITIES
from ..files import atomic_write
from ..target_modules import ADAPTER_POSITIONS
from ..tuners import BottleneckConfig, CompacterConfig, ParallelAdapterConfig

CONFIG_NAME = "adapter_config.json"
WEIGHT_NAMES = ("adapter.safetensors", "pytorch_adapter.bin")
HEAD_CONFIG_NAME = "head_config.json"
HEAD_WEIGHT_NAMES = ("model_head.safetensors", "pytorch_model_head.bin")

# model type -> {AdapterHub location: (our sequential target, our parallel target)}, relative to the layer
_BERT_LIKE = {"attention.output": ("attention.output.dense", None), "output": ("output.dense", "output.dense")}
LOCATIONS = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "distilbert": {"attention_adapters": ("attention.out_lin", None), "output_adapters": ("ffn.lin2", "ffn")},
    "gpt2": {"attention_adapters": ("attn.c_proj", None), "output_adapters": ("mlp.c_proj", "mlp")},
    "llama": {"attention_adapters": ("self_attn.o_proj", None), "output_adapters": ("mlp.down_proj", "mlp")},
    "mistral": {"attention_adapters": ("self_attn.o_proj", None), "output_adapters": ("mlp.down_proj", "mlp")},
}
# AdapterHub tensor name (after "adapters.<name>.") -> ours; `{d}` is the down-projection's index in its Sequential
_TENSORS = {
    "adapter_down.{d}.weight": "down_weight", "adapter_down.{d}.bias": "down_bias",
    "adapter_up.weight": "up_weight", "adapter_up.bias": "up_bias",
    "adapter_down.{d}.W_left": "down_s", "adapter_down.{d}.W_right": "down_t", "adapter_down.{d}.W": "down_w",
    "adapter_down.{d}.b": "down_bias", "adapter_up.W_left": "up_s", "adapter_up.W_right": "up_t",
    "adapter_up.W": "up_w", "adapter_up.b": "up_bias",
    "adapter_norm_before.weight": "ln_before_weight", "adapter_norm_before.bias": "ln_before_bias",
    "adapter_norm_after.weight": "ln_after_weight", "adapter_norm_after.bias": "ln_after_bias",
    "scaling": "scale", "gate.weight": "gate_weight", "gate.bias": "gate_bias",
}
# AdapterHub's shared PHM factors (shared_W_phm) -> ours (with a leading route dimension)
_SHARED_W = {"W_down_left": "down_s", "W_down_right": "down_t", "W_up_left": "up_s", "W_up_right": "up_t"}
# fields of BnConfig that change nothing once trained, or that we express through the keys
_IGNORED = {"init_weights_seed", "stochastic_depth", "mh_adapter", "output_adapter", "leave_out", "reduction_factor",
            "architecture", "phm_layer", "hypercomplex_nonlinearity", "init_weights", "cross_adapter"}


class ConversionError(ValueError):
    """An AdapterHub setting or file that cannot be reproduced here: refused by name, never approximated."""


@dataclass
class ConversionReport:
    """What the conversion found and did."""

    source: str
    adapter_name: str
    model_type: str
    config: object = None
    targets: list[str] = field(default_factory=list)
    head: Optional[dict] = None  # AdapterHub's head config, when the folder has one
    head_included: bool = False  # carried over as a modules_to_save head
    head_modules: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.source}: AdapterHub adapter {self.adapter_name!r} ({self.model_type}) -> "
                 f"{type(self.config).__name__}, {len(self.targets)} adapted modules"]
        if self.head is not None:
            state = (f"included as modules_to_save {self.head_modules}" if self.head_included else "left out")
            lines.append(f"prediction head ({self.head.get('model_class')}): {state}")
        base = getattr(self.config, "base_model_name_or_path", None)
        lines.append(f"base model: {base!r}, task type: {getattr(self.config, 'task_type', None)!r}")
        lines += self.notes
        return "\n".join(lines)


def resolve(source: str, revision: Optional[str] = None) -> Path:
    """A local folder, or the files of a Hub repository (downloaded with ``huggingface_hub``)."""
    path = Path(source)
    if path.is_dir():
        return path
    if path.exists():
        raise ConversionError(f"{source} is a file; pass the folder that holds {CONFIG_NAME}.")
    text = str(source)
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep in text and os.sep != "/":
        raise ConversionError(f"{source}: no such folder (and not a Hub repo id).")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    patterns = [CONFIG_NAME, HEAD_CONFIG_NAME, *WEIGHT_NAMES, *HEAD_WEIGHT_NAMES]
    try:
        return Path(snapshot_download(text, revision=revision, allow_patterns=patterns))
    except (HFValidationError, HfHubHTTPError, OSError, ValueError) as error:
        raise ConversionError(f"{source}: not a local folder, and the Hub could not provide it "
                              f"({type(error).__name__}: {error}).") from None


def read_weights(folder: Path, names=WEIGHT_NAMES) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors of the first weight file present: safetensors, or a torch file read with weights_only=True."""
    for name in names:
        file = folder / name
        if file.exists():
            try:
                if name.endswith(".safetensors"):
                    return load_file(file), name
                return torch.load(file, map_location="cpu", weights_only=True), name
            except Exception as error:
                raise ConversionError(f"{file} could not be read as a weights file ({type(error).__name__}: "
                                      f"{error}).") from None
    raise ConversionError(f"{folder} holds none of {list(names)}.")


def read_config(folder: Path) -> dict:
    file = folder / CONFIG_NAME
    if not file.exists():
        raise ConversionError(f"{folder} has no {CONFIG_NAME}: not an AdapterHub adapter folder.")
    try:
        saved = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise ConversionError(f"{file} is not valid JSON: {error}.") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise ConversionError(f"{file} has no AdapterHub `config` object (is it a PEFT adapter_config.json?).")
    return saved


def convert_config(saved: dict, targets: list[str]):
    """Our config for an AdapterHub ``BnConfig`` (every field that changes the forward, or a ConversionError)."""
    config_cls, kwargs = config_arguments(dict(saved["config"]), targets)
    return config_cls(**kwargs)


def config_arguments(ah: dict, targets) -> tuple[type, dict]:
    """(our config class, its arguments) for the fields of an AdapterHub ``BnConfig`` (also used for its presets by
    name, ``peft_bottleneck.get_config``)."""
    architecture = ah.get("architecture")
    if architecture not in (None, "bottleneck"):
        raise ConversionError(f"AdapterHub architecture {architecture!r} is not a bottleneck adapter; only "
                              "bottleneck adapters (seq_bn, double_seq_bn, par_bn, compacter, ...) convert.")
    for name, allowed in (("cross_adapter", False),):
        if ah.get(name, allowed) not in (allowed,):
            reason = {"cross_adapter": "cross-attention adapters are not in the architecture table"}[name]
            raise ConversionError(f"`{name}={ah[name]!r}` cannot be reproduced: {reason}.")
    activation = str(ah.get("non_linearity", "relu")).lower()
    if activation not in ALLOWED_NON_LINEARITIES:
        raise ConversionError(f"`non_linearity={activation!r}` is not one of ours {list(ALLOWED_NON_LINEARITIES)}.")
    common = dict(
        target_modules=targets, non_linearity=activation, adapter_dropout=float(ah.get("dropout", 0.0)),
        scaling=ah.get("scaling", 1.0), use_gating=bool(ah.get("use_gating", False)),
        # AdapterHub's parallel adapters never read original_ln_before (its compacter++ preset sets it anyway)
        original_ln_before=bool(ah.get("original_ln_before", False)) and not ah.get("is_parallel"),
        original_ln_after=bool(ah.get("original_ln_after", True)),
        residual_before_ln=ah.get("residual_before_ln", True), ln_before=bool(ah.get("ln_before", False)),
        ln_after=bool(ah.get("ln_after", False)),
        adapter_residual_before_ln=bool(ah.get("adapter_residual_before_ln", False)),
        inv_adapter=ah.get("inv_adapter") or None,
        # a converted checkpoint's width is read off its weights (bottleneck_size); a mapping sizes each layer
        reduction_factor=ah.get("reduction_factor", 16),
        inv_adapter_reduction_factor=ah.get("inv_adapter_reduction_factor") if ah.get("inv_adapter") else None,
    )
    placement = "houlsby" if ah.get("mh_adapter") else "pfeiffer"
    if ah.get("phm_layer"):
        if ah.get("is_parallel") and ah.get("mh_adapter"):
            raise ConversionError("A parallel Compacter at the attention output (`mh_adapter=True`, "
                                  "`is_parallel=True`) has no counterpart here: parallel adapters span the "
                                  "feed-forward block.")
        phm = {k: ah[k] for k in ("phm_dim", "shared_phm_rule", "factorized_phm_rule", "factorized_phm_W",
                                  "phm_c_init", "phm_init_range", "learn_phm", "phm_bias", "phm_rank",
                                  "shared_W_phm") if k in ah}
        return CompacterConfig, dict(placement=placement, init_weights="adapterhub",
                                     is_parallel=bool(ah.get("is_parallel")), **phm, **common)
    init = {"bert": "bert", "houlsby": "houlsby", "mam_adapter": "mam_adapter"}.get(ah.get("init_weights"), "bert")
    if ah.get("is_parallel"):
        return ParallelAdapterConfig, dict(init_weights=init, **common)
    return BottleneckConfig, dict(placement=placement, init_weights=init, **common)


def convert_state_dict(weights: dict, saved: dict, config) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Our checkpoint tensors and the modules they adapt, from AdapterHub's keys."""
    model_type = saved.get("model_type")
    locations = LOCATIONS.get(model_type)
    if locations is None:
        raise ConversionError(f"AdapterHub model_type={model_type!r} is not in the conversion table; supported: "
                              f"{sorted(LOCATIONS)}.")
    name = saved.get("name")
    down_index = 1 if config.ln_before else 0
    names = {ah.format(d=down_index): ours for ah, ours in _TENSORS.items()}
    location_pattern = "|".join(re.escape(loc) for loc in sorted(locations, key=len, reverse=True))
    key_pattern = re.compile(rf"^(.*?)\.?({location_pattern})\.adapters\.{re.escape(str(name))}\.(.+)$")
    prefix = prefix_of(config)
    converted, modules, shared = {}, {}, {}
    invertible = re.compile(rf"^(?:.*\.)?invertible_adapters\.{re.escape(str(name))}\.(.+)$")
    for key, value in weights.items():
        if ".shared_parameters." in key:
            shared[key.rsplit(".", 1)[1]] = value
            continue
        coupling = invertible.match(key)
        if coupling is not None:  # the tuner's own container (see tuners/base/invertible.py), saved without a name
            converted[f"base_model.{prefix}invertible.{coupling.group(1)}"] = value
            continue
        match = key_pattern.match(key)
        if match is None:
            raise ConversionError(f"Unexpected tensor {key!r}: not an adapter {name!r} at a location of "
                                  f"{model_type} ({sorted(locations)}).")
        layer, location, tensor = match.groups()
        sequential, parallel = locations[location]
        target = parallel if config.is_parallel else sequential
        if target is None:
            raise ConversionError(f"A parallel adapter at {location!r} has no counterpart here.")
        module = f"{layer}.{target}" if layer else target
        modules.setdefault(module, {})
        rule = re.match(r"^adapter_(down|up)(?:\.\d+)?\.(phm_rule(?:_left|_right)?)$", tensor)
        if rule:  # a layer's own rules, one per projection: stacked (down, up)
            modules[module].setdefault(rule.group(2), {})[rule.group(1)] = value
            continue
        if config.ln_before and tensor.startswith("adapter_down.0."):
            continue  # the same LayerNorm as adapter_norm_before, registered twice by AdapterHub
        if tensor not in names:
            raise ConversionError(f"Unexpected adapter tensor {tensor!r} in {key!r}.")
        modules[module][names[tensor]] = value
    if not modules:
        raise ConversionError(f"No tensors of adapter {name!r} were found.")
    ordered = sorted(modules, key=_module_order)
    for module in ordered:
        for tensor, value in modules[module].items():
            if isinstance(value, dict):
                value = torch.stack([value["down"], value["up"]])
                converted[f"base_model.model.{module}.{prefix}{tensor}"] = value
                continue
            converted[f"base_model.model.{module}.{prefix}{tensor}"] = _with_route_dim(tensor, value)
    for tensor, value in shared.items():  # one rule (and shared B_i) for the model: with the first adapted module
        ours = _SHARED_W.get(tensor)
        converted[f"base_model.model.{ordered[0]}.{prefix}{ours or tensor}"] = value.unsqueeze(0) if ours else value
    return converted, ordered


def _width(state: dict) -> int:
    """The bottleneck width, the same in every adapted module (else a ConversionError)."""
    widths = set()
    for key, value in state.items():
        if key.endswith("down_weight"):
            widths.add(value.shape[1])
        elif key.endswith("down_t") or key.endswith("down_w"):
            widths.add(value.shape[1] * value.shape[-1])
    if len(widths) != 1:
        raise ConversionError(f"The adapter's bottleneck width differs between layers ({sorted(widths)}): one width "
                              "per adapter here.")
    return widths.pop()


def _with_route_dim(tensor: str, value: torch.Tensor) -> torch.Tensor:
    if tensor == "gate_weight":
        return value.unsqueeze(0)  # (1, in) -> (1, 1, in)
    if tensor == "gate_bias":
        return value.reshape(1, 1)
    if tensor == "scale" and value.numel() == 1:
        return value.reshape(1)
    return value.unsqueeze(0)


def _module_order(module: str) -> tuple:
    """Module-tree order: by layer index, the attention position before the feed-forward one."""
    numbers = tuple(int(n) for n in re.findall(r"\.(\d+)\.", f".{module}."))
    return numbers, 0 if "att" in module else 1, module


def prefix_of(config) -> str:
    return {"BOTTLENECK": "bottleneck_", "PARALLEL_ADAPTER": "parallel_adapter_",
            "COMPACTER": "compacter_"}[config.peft_type.value]


def convert(source: str, destination: str, *, revision: Optional[str] = None, include_head: bool = True,
            base_model: Optional[str] = None, base_model_prefix_map: Optional[dict] = None,
            head_modules_available=None) -> ConversionReport:
    """Convert an AdapterHub adapter (folder or Hub repo) into a PEFT adapter folder at ``destination``.

    The folder's ``adapter_config.json`` names the base model (``base_model``, else AdapterHub's ``model_name``)
    and the task type of AdapterHub's saved head; a static head (a transformers class's own, e.g.
    ``BertForSequenceClassification.classifier``) is carried over as a ``modules_to_save`` head unless
    ``include_head=False``, so ``AutoPeftModelFor*`` loads the folder with it. What is not carried is reported."""
    folder = resolve(source, revision)
    saved = read_config(folder)
    weights, weight_file = read_weights(folder)
    model_type = saved.get("model_type")
    config = convert_config(saved, None)
    state, modules = convert_state_dict(weights, saved, config)
    if base_model_prefix_map:
        state = {_reprefix_key(k, base_model_prefix_map): v for k, v in state.items()}
        modules = [_reprefix(m, base_model_prefix_map) for m in modules]
    config.target_modules = set(modules)
    if not isinstance(config.reduction_factor, dict):
        config.bottleneck_size = _width(state)
    if config.is_parallel:
        config.input_from = dict(getattr(ADAPTER_POSITIONS.get(model_type), "ffn_input_from", {}) or {})
    if saved["config"].get("leave_out"):
        config.leave_out = list(saved["config"]["leave_out"])
    report = ConversionReport(str(source), str(saved.get("name")), str(model_type), config, modules)
    if saved["config"].get("stochastic_depth"):
        report.notes.append("stochastic_depth (DropPath, training only) is not applied when training here; the "
                            "converted adapter's outputs are exact.")
    config.base_model_name_or_path = base_model or saved.get("model_name") or None
    if config.base_model_name_or_path is None:
        report.notes.append("the AdapterHub config names no base model: pass base_model= / --base-model so that "
                            "AutoPeftModelFor* can load the folder")
    head_file = folder / HEAD_CONFIG_NAME
    if head_file.exists():
        report.head = json.loads(head_file.read_text())
        config.task_type = task_type_of(report.head)
        if include_head:
            state.update(_carry_head(folder, report, config, head_modules_available))
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(destination)
    _write_atomically(destination / "adapter_model.safetensors", state)
    report.notes.append(f"read {weight_file}; wrote {destination}")
    return report


# the transformers head class's suffix -> PEFT's task type
_TASK_TYPES = {"ForSequenceClassification": "SEQ_CLS", "ForTokenClassification": "TOKEN_CLS",
               "ForQuestionAnswering": "QUESTION_ANS", "ForCausalLM": "CAUSAL_LM", "LMHeadModel": "CAUSAL_LM",
               "ForConditionalGeneration": "SEQ_2_SEQ_LM", "ForSeq2SeqLM": "SEQ_2_SEQ_LM"}
# AdapterHub flex-head types -> PEFT's task type (the head itself has no transformers counterpart)
_FLEX_TASK_TYPES = {"classification": "SEQ_CLS", "multilabel_classification": "SEQ_CLS", "tagging": "TOKEN_CLS",
                    "question_answering": "QUESTION_ANS", "causal_lm": "CAUSAL_LM", "seq2seq_lm": "SEQ_2_SEQ_LM"}


def task_type_of(head: dict) -> Optional[str]:
    """PEFT's task type for AdapterHub's saved head: from a static head's transformers class name, or a flex
    head's type."""
    model_class = str(head.get("model_class") or "")
    for suffix, task_type in _TASK_TYPES.items():
        if model_class.endswith(suffix):
            return task_type
    return _FLEX_TASK_TYPES.get(str((head.get("config") or {}).get("head_type")))


def _carry_head(folder: Path, report: ConversionReport, config, available) -> dict:
    """The head's tensors under PEFT's keys for a ``modules_to_save`` head, when the head is a transformers class's
    own (AdapterHub's static heads, saved with their module names); else nothing, and the report says why."""
    model_class = str(report.head.get("model_class") or "")
    if model_class.endswith("AdapterModel"):
        head_type = (report.head.get("config") or {}).get("head_type")
        report.notes.append(f"AdapterHub flex head {head_type!r} of {model_class} left out: its layers have no "
                            "transformers head class to load into here; train a new head (task_type "
                            f"{config.task_type!r} is set)")
        return {}
    if config.task_type == "CAUSAL_LM" or model_class.endswith(("ForMaskedLM", "ForPreTraining")):
        report.notes.append(f"the LM head of {model_class} is the base model's own output embedding; not carried")
        return {}
    try:
        tensors, _ = read_weights(folder, HEAD_WEIGHT_NAMES)
    except ConversionError:
        report.notes.append("head_config.json has no head weights beside it; head left out")
        return {}
    modules = sorted({key.split(".")[0] for key in tensors})
    missing = [m for m in modules if available is not None and m not in available]
    if missing:
        report.notes.append(f"head modules {missing} of {model_class} are not in the base model given; head left out")
        return {}
    config.modules_to_save = modules
    report.head_included, report.head_modules = True, modules
    return {f"base_model.model.{key}": value.contiguous() for key, value in tensors.items()}


def _reprefix(module: str, mapping: dict) -> str:
    """``module`` with its leading path replaced: {"": "bert"} prepends, {"bert": ""} strips."""
    for old, new in mapping.items():
        if old == "":
            return f"{new}.{module}" if new else module
        if module == old or module.startswith(old + "."):
            rest = module[len(old):].lstrip(".")
            return f"{new}.{rest}" if new else rest
    return module


def _reprefix_key(key: str, mapping: dict) -> str:
    if not key.startswith("base_model.model."):
        return key  # the tuner's own containers (invertible adapters) do not follow the model's module paths
    body = key.removeprefix("base_model.model.")
    return "base_model.model." + _reprefix(body, mapping)


def _write_atomically(path: Path, tensors: dict) -> None:
    atomic_write(path, lambda temporary: save_file({k: v.contiguous() for k, v in tensors.items()}, temporary))


def from_adapterhub(source: str, base_model, *, adapter_name: str = "default", revision: Optional[str] = None,
                    is_trainable: bool = False):
    """Load an AdapterHub adapter (folder or Hub repo) onto ``base_model`` (a transformers model) as a PeftModel.

    AdapterHub's module paths are matched to ``base_model``'s (an adapter trained on ``BertModel`` loads onto
    ``BertForSequenceClassification`` and the reverse). The conversion report is in ``model.conversion_report``.
    """
    from peft import PeftModel

    with tempfile.TemporaryDirectory() as scratch:
        available = {name.split(".")[0] for name, _ in base_model.named_modules() if name}
        report = convert(source, scratch, revision=revision, head_modules_available=available)
        mapping = _prefix_map(report.targets, base_model)
        if mapping:
            report = convert(source, scratch, revision=revision, base_model_prefix_map=mapping,
                             head_modules_available=available)
        model = PeftModel.from_pretrained(base_model, scratch, adapter_name=adapter_name, is_trainable=is_trainable)
    model.conversion_report = report
    return model


def _prefix_map(targets: list[str], base_model) -> dict:
    """{AdapterHub's leading path: base_model's} when the two models name the encoder differently."""
    names = {name for name, _ in base_model.named_modules()}
    if all(t in names for t in targets):
        return {}
    first = targets[0]
    candidates = [n for n in names if n.endswith("." + first) or n == first]
    if candidates:  # the base has an extra leading path (e.g. AdapterHub's BertModel onto BertFor...)
        extra = min(candidates, key=len)[: -len(first)].rstrip(".")
        return {"": extra} if extra else {}
    head, _, rest = first.partition(".")
    if rest in names:  # AdapterHub's path has a leading part the base lacks
        return {head: ""}
    raise ConversionError(f"The base model has no module {first!r} (nor one ending in it): is it the architecture "
                          "the adapter was trained for?")
