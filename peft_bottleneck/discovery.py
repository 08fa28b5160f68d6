"""Adapter positions found from the model itself, for architectures the table in ``target_modules`` does not name.

One forward on a small dummy input runs with hooks on every module inside the model's repeated blocks (the items of
its ``nn.ModuleList`` / ``nn.Sequential`` containers). Each block's wiring is then read off the captured tensors and
confirmed numerically, never guessed from names alone:

- the stream walk: starting from the block's input ``x``, find the first tensor ``z`` that some later module reads
  (or the block returns) with ``z == x + b`` (``x + b1 + b2`` for parallel-residual blocks such as GPT-J, Falcon,
  Cohere) for outputs ``b`` of modules called in between: a residual sublayer, whose branch is ``b``;
- post-LN or pre-LN: the stream continues as ``LN(z)`` when a parameter-light module reads ``z`` and the walk from
  its output explains the rest of the block (BERT), else as ``z`` itself (Llama); the walk must end exactly at the
  block's output, or the block is not used;
- each branch's output projection is the innermost linear layer whose output equals ``b`` (or the input of a norm or
  scale applied to the branch before the add: Gemma 2/3, OLMo 2, DINOv2's layer scale; such sublayers get no block
  site, as the table gives Gemma 2 none); a branch with no linear layer producing it (a mixture-of-experts block
  with fused experts) is adapted as a whole block, sized from the measured hidden size;
- the residual input a setting such as ``original_ln_before`` needs is captured from a module that received exactly
  that tensor, and the parallel adapter's input from a module whose first input it is.

Attention and feed-forward branches are told apart by the module names on the branch's path ("attn", "attention"):
the only names read. Results are full module names, so towers with the same local names (a vision tower inside a
vision-language model) are never confused.
"""

from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from .target_modules import AdapterPositions, BlockSite

MODALITIES = ("text", "vision", "audio")
TOWER_CHOICES = (*MODALITIES, "all")
_VISION_WORDS = ("vision", "visual", "image", "pixel", "patch", "vit", "img")
_AUDIO_WORDS = ("audio", "speech", "wav", "acoustic", "hubert", "whisper_encoder")
_MAIN_INPUT_MODALITY = {"input_ids": "text", "pixel_values": "vision", "input_values": "audio",
                        "input_features": "audio"}
_ATTENTION_WORDS = ("attn", "attention", "mixer")
_SEQUENCE = 6


class DiscoveryError(ValueError):
    """Discovery could not decide where adapters go; the message says what was unclear and what to pass."""


@dataclass
class _Call:
    name: str
    module: nn.Module
    start: int
    end: int = -1
    inputs: list = field(default_factory=list)  # (position or None, keyword or None, tensor)
    output: Optional[torch.Tensor] = None

    @property
    def first_input(self) -> Optional[torch.Tensor]:
        return self.inputs[0][2] if self.inputs else None


@dataclass(frozen=True)
class Sublayer:
    """One residual sublayer of a block, as confirmed on the captured tensors."""

    role: str  # "attention" or "ffn"
    projection: str  # full name of the module whose output is the branch (the adapter position)
    block: str  # outermost module producing that output (what a parallel adapter spans)
    input_source: Optional[str]  # a module whose first input is the sublayer's residual stream
    site: Optional[BlockSite]  # residual and LayerNorm, when the branch is added unchanged
    block_site: Optional[BlockSite] = None  # the same, for the block a parallel adapter wraps


@dataclass(frozen=True)
class Tower:
    """The blocks of one ``ModuleList`` (an encoder, a decoder, a vision tower...)."""

    path: str
    modality: str
    sublayers: tuple[Sublayer, ...]


@dataclass(frozen=True)
class Discovered:
    """What one probe of a model found: its towers, and the measured (in, out) features of the modules inside."""

    model_type: Optional[str]
    towers: tuple[Tower, ...]
    features: dict
    is_encoder_decoder: bool
    unclear: tuple[str, ...] = ()

    def positions(self, towers=None) -> AdapterPositions:
        chosen = self.chosen_towers(towers)
        subs = [s for t in chosen for s in t.sublayers]
        attention = tuple(s.projection for s in subs if s.role == "attention")
        ffn = [s for s in subs if s.role == "ffn"]
        sites = {}
        for s in subs:
            if s.site is not None:
                sites[s.projection] = s.site
            if s.block_site is not None and s.role == "ffn":
                sites[s.block] = s.block_site
        return AdapterPositions(
            attention_output=attention,
            ffn_output=tuple(s.projection for s in ffn),
            ffn_block=tuple(s.block for s in ffn),
            ffn_input_from={s.block: s.input_source for s in ffn if s.input_source is not None},
            sites=sites,
        )

    def chosen_towers(self, towers=None) -> tuple[Tower, ...]:
        present = sorted({t.modality for t in self.towers})
        if towers is None:
            wanted = set(present) if self.is_encoder_decoder or "text" not in present else {"text"}
        elif towers == "all" or (not isinstance(towers, str) and "all" in towers):
            wanted = set(present)
        else:
            wanted = {towers} if isinstance(towers, str) else set(towers)
        chosen = tuple(t for t in self.towers if t.modality in wanted)
        if not chosen:
            raise DiscoveryError(
                f"`towers={towers!r}` selects no blocks of model_type={self.model_type!r}: its towers are "
                f"{[f'{t.path} ({t.modality})' for t in self.towers]}. Allowed values: {list(TOWER_CHOICES)}."
            )
        return chosen


# -- the probe ------------------------------------------------------------------------------------------------------


def discover(model: nn.Module) -> Discovered:
    """Probe ``model`` once and read its towers; raises DiscoveryError when it finds no transformer blocks."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    lists = _block_lists(model)
    if not lists:
        raise DiscoveryError(_no_blocks(model, model_type, "it has no nn.ModuleList of identical modules"))
    calls = _probe(model, lists)
    towers, unclear, features = [], [], {}
    for path in lists:
        items = [f"{path}.{i}" for i in range(len(model.get_submodule(path)))]
        if items[0] not in calls:
            unclear.append(f"{path}: did not run on a dummy input")
            continue
        found = [_read_block(item, calls) for item in items if item in calls]
        if any(f is None for f in found) or not all(found):
            if any(found):
                unclear.append(f"{path}: residual sublayers found but the blocks' outputs are not explained by them")
            continue
        towers.append(Tower(path, _modality(model, path), tuple(s for f in found for s in f)))
    towers = _innermost(towers)
    unclear = [u for u in unclear if not any(t.path.startswith(u.split(":")[0] + ".") for t in towers)]
    for call_list in calls.values():
        call = call_list
        if call.inputs and call.output is not None:
            features[call.name] = (int(call.first_input.shape[-1]), int(call.output.shape[-1]))
    if not towers:
        detail = "; ".join(unclear) if unclear else "no repeated module adds a residual branch to its input"
        raise DiscoveryError(_no_blocks(model, model_type, detail))
    return Discovered(model_type, tuple(towers), features, bool(getattr(config, "is_encoder_decoder", False)),
                      tuple(unclear))


def _no_blocks(model, model_type, detail: str) -> str:
    return (
        f"Could not find transformer blocks in {type(model).__name__} (model_type={model_type!r}): {detail}. Pass "
        "`target_modules=[...]` with the modules to adapt (e.g. ['o_proj', 'down_proj']), or register this "
        "architecture's positions with `peft_bottleneck.register_positions(model_type, AdapterPositions(...))`."
    )


def _block_lists(model: nn.Module) -> list[str]:
    """ModuleLists / Sequentials of one module class (candidate block lists), outermost first."""
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)) or len(module) == 0 or not name:
            continue
        classes = {type(m) for m in module}
        if len(classes) != 1:
            continue
        item = module[0]
        if not any(isinstance(m, (nn.Linear,)) or _is_projection(m) for m in item.modules()):
            if not any(p.dim() >= 2 for p in item.parameters()):
                continue
        found.append(name)
    return found


def _innermost(towers: list[Tower]) -> list[Tower]:
    """A block list nested inside another's blocks wins (Swin's blocks inside its stages)."""
    paths = [t.path for t in towers]
    return [t for t in towers if not any(p != t.path and p.startswith(t.path + ".") for p in paths)]


def _modality(model: nn.Module, path: str) -> str:
    atoms = path.split(".")
    for depth in range(len(atoms), -1, -1):  # the nearest enclosing module that says
        name = ".".join(atoms[:depth])
        module = model.get_submodule(name) if name else model
        words = (atoms[depth - 1] if depth else "").lower() + " " + type(module).__name__.lower()
        if any(w in words for w in _VISION_WORDS):
            return "vision"
        if any(w in words for w in _AUDIO_WORDS):
            return "audio"
        main = getattr(module, "main_input_name", None) if hasattr(module, "config") else None
        if main in _MAIN_INPUT_MODALITY and (depth or main != "input_ids" or name == ""):
            return _MAIN_INPUT_MODALITY[main]
    return "text"


def _probe(model: nn.Module, lists: list[str]) -> dict[str, _Call]:
    """The first call of every module inside the block lists, with its tensor inputs and output."""
    watched = {}
    for path in lists:
        for name, module in model.get_submodule(path).named_modules():
            if name:
                watched[f"{path}.{name}"] = module
    calls: dict[str, _Call] = {}
    clock = itertools.count()
    skip_depth = [0]

    def pre(name):
        def hook(module, args, kwargs):
            if name in calls or skip_depth[0]:
                if _is_tuner_layer(module):
                    skip_depth[0] += 1
                return
            call = _Call(name, module, next(clock))
            # copies: a block may later change a tensor in place (Falcon adds attention into the MLP's output)
            call.inputs = [(i, None, a.clone()) for i, a in enumerate(args) if torch.is_tensor(a)] + [
                (None, k, v.clone()) for k, v in kwargs.items() if torch.is_tensor(v)]
            calls[name] = call
            if _is_tuner_layer(module):
                skip_depth[0] += 1  # an adapter layer already there counts as a projection: not its insides
        return hook

    def post(name):
        def hook(module, args, kwargs, output):
            if _is_tuner_layer(module):
                skip_depth[0] -= 1
            call = calls.get(name)
            if call is not None and call.end < 0:
                call.end = next(clock)
                output = _first_tensor(output)
                call.output = None if output is None else output.clone()
        return hook

    handles = []
    for name, module in watched.items():
        handles.append(module.register_forward_pre_hook(pre(name), with_kwargs=True))
        handles.append(module.register_forward_hook(post(name), with_kwargs=True))
    training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            _run_dummy(model, lists, calls)
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in training.items():
            module.training = flag
    return {k: v for k, v in calls.items() if v.end >= 0}


def _run_dummy(model: nn.Module, lists: list[str], calls: dict) -> None:
    """Run the model on a dummy input; towers that did not run (a vision tower fed only with images) are run
    through their own sub-model."""
    errors = []
    _try_forward(model, errors)
    for path in lists:
        if f"{path}.0" in calls:
            continue
        atoms = path.split(".")
        for depth in range(len(atoms) - 1, 0, -1):
            owner = model.get_submodule(".".join(atoms[:depth]))
            if hasattr(owner, "config") and hasattr(owner, "main_input_name"):
                _try_forward(owner, errors)
                break
        else:
            for depth in range(len(atoms) - 1, 0, -1):  # a tower without a model class of its own (CLIP's)
                if _try_forward(model.get_submodule(".".join(atoms[:depth])), errors, bare=True):
                    break


def _try_forward(module: nn.Module, errors: list, bare: bool = False) -> bool:
    for inputs in _dummy_inputs(module, bare):
        try:
            module(**inputs)
            return True
        except Exception as error:  # noqa: BLE001 - another dummy input may suit it; reported if none does
            errors.append(f"{type(module).__name__}: {type(error).__name__}: {error}")
    return False


def _dummy_inputs(module: nn.Module, bare: bool):
    """Candidate keyword inputs for ``module``: with every modality its forward takes, then its main input only."""
    try:
        parameters = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return
    config = getattr(module, "config", None)
    reference = next(module.parameters(), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    generator = torch.Generator().manual_seed(0)
    makers = {
        "input_ids": lambda: _token_ids(config, generator),
        "pixel_values": lambda: _pixels(config, generator, dtype),
        "input_values": lambda: torch.randn(1, 16000, generator=generator).to(dtype),
        "input_features": lambda: _features(config, generator, dtype),
    }
    if bare and config is None:
        size = _hidden_size_of(module)
        if "hidden_states" in parameters and size:
            yield {"hidden_states": torch.randn(1, _SEQUENCE, size, generator=generator).to(device, dtype)}
        return
    main = getattr(module, "main_input_name", "input_ids")
    present = [name for name in makers if name in parameters]
    options = [present, [main] if main in parameters else present[:1]]
    for option in options:
        inputs = {}
        try:
            for name in option:
                inputs[name] = makers[name]()
        except (AttributeError, TypeError):
            continue
        if not inputs:
            continue
        if getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" in parameters:
            inputs["decoder_input_ids"] = _token_ids(config, generator, length=4)
        if "use_cache" in parameters:
            inputs["use_cache"] = False
        yield {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}


def _sub_config(config, *names):
    for name in names:
        sub = getattr(config, name, None)
        if sub is not None:
            return sub
    return config


def _token_ids(config, generator, length: int = _SEQUENCE) -> torch.Tensor:
    text = _sub_config(config, "text_config")
    vocab = getattr(text, "vocab_size", None) or getattr(config, "vocab_size", None)
    if not vocab:
        raise AttributeError("vocab_size")
    low = min(3, vocab - 1)
    return torch.randint(low, max(low + 1, min(vocab, 1000)), (1, length), generator=generator)


def _pixels(config, generator, dtype) -> torch.Tensor:
    vision = _sub_config(config, "vision_config")
    size = getattr(vision, "image_size", 224)
    height, width = (size, size) if isinstance(size, int) else tuple(size)[-2:]
    channels = getattr(vision, "num_channels", 3)
    return torch.randn(1, channels, height, width, generator=generator).to(dtype)


def _features(config, generator, dtype) -> torch.Tensor:
    audio = _sub_config(config, "audio_config", "encoder_config")
    bins = getattr(audio, "num_mel_bins", 80)
    frames = 2 * getattr(audio, "max_source_positions", 1500)
    return torch.randn(1, bins, frames, generator=generator).to(dtype)


def _hidden_size_of(module) -> Optional[int]:
    for sub in module.modules():
        weight = getattr(sub, "weight", None)
        if isinstance(sub, nn.LayerNorm) or (torch.is_tensor(weight) and weight.dim() == 1):
            return int(weight.shape[0])
    return None


# -- reading one block ----------------------------------------------------------------------------------------------


def _read_block(item: str, calls: dict[str, _Call]) -> Optional[list[Sublayer]]:
    """The sublayers of one block (empty: none found; None: found, but the block output is not explained)."""
    block = calls[item]
    x = _hidden_input(block)
    y = block.output
    if not _alike(x, y):
        return []
    inside = sorted((c for n, c in calls.items() if n.startswith(item + ".") and c.start > block.start
                     and c.end < block.end), key=lambda c: c.start)
    walk = _walk(x, block.start, y, block.end, inside, item)
    if walk is None:
        return None if _any_sum(x, block.start, y, block.end, inside) else []
    return walk


def _hidden_input(call: _Call) -> Optional[torch.Tensor]:
    for position, keyword, tensor in call.inputs:
        if keyword == "hidden_states":
            return tensor
    floats = [t for _, _, t in call.inputs if t.is_floating_point()]
    return floats[0] if floats else None


def _walk(stream, since: int, y, until: int, inside: list[_Call], item: str, depth: int = 0):
    if depth > 8:
        return None
    found = _next_sum(stream, since, y, until, inside)
    if found is None:
        return [] if _same(stream, y) else None
    z, z_time, z_reader, branches = found
    norm = _post_norm(z, z_time, inside)
    if norm is not None:  # post-LN if the rest of the block is explained from LN(z)
        rest = [] if _same(norm.output, y) else _walk(norm.output, norm.end, y, until, inside, item, depth + 1)
        if rest is not None:
            return _sublayers(stream, since, z_reader, branches, inside, item, norm) + rest
    rest = [] if z is y or _same(z, y) else _walk(z, z_time, y, until, inside, item, depth + 1)
    if rest is None:
        return None
    return _sublayers(stream, since, z_reader, branches, inside, item, None) + rest


def _any_sum(x, since, y, until, inside) -> bool:
    return _next_sum(x, since, y, until, inside) is not None


def _next_sum(stream, since: int, y, until: int, inside: list[_Call]):
    """(z, time, reader, [(branch tensor, scaled)]) for the first tensor read after ``since`` that is ``stream``
    plus one or two branches computed in between."""
    readers = [(c.start, c, t) for c in inside if c.start >= since for _, _, t in c.inputs]
    readers.append((until, None, y))
    seen = []
    for time, reader, z in readers:
        if not _alike(z, stream) or not z.is_floating_point() or _same(z, stream):
            continue
        if any(z is s or _same(z, s) for s in seen):
            continue
        seen.append(z)
        branches = _distinct([c.output for c in inside if since < c.end <= time and c.output is not None
                              and _alike(c.output, stream) and not _same(c.output, stream)
                              and not _same(c.output, z)])
        diff = _flat(z).float() - _flat(stream).float()
        tolerance = _tolerance(z, stream)
        for branch in branches:
            if torch.allclose(diff, _flat(branch).float(), rtol=1e-3, atol=tolerance):
                return z, time, reader, [(branch, False)]
        for first, second in itertools.combinations(branches, 2):
            if torch.allclose(diff, _flat(first).float() + _flat(second).float(), rtol=1e-3, atol=tolerance):
                return z, time, reader, [(first, False), (second, False)]
        for branch in branches:  # a scaled branch (Granite's residual_multiplier, BEiT's layer scale): no site
            b = _flat(branch).float()
            scale = (diff * b).sum(0) / (b * b).sum(0).clamp_min(1e-12)
            if bool((scale.abs() > 1e-3).all()) and torch.allclose(diff, scale * b, rtol=1e-3, atol=tolerance):
                return z, time, reader, [(branch, True)]
        for branch in branches:  # positions reordered (Swin's windows): position-wise adapters still fit, no site
            if _rows_permuted(diff, _flat(branch).float(), tolerance):
                return z, time, reader, [(branch, True)]
    return None


def _rows_permuted(a: torch.Tensor, b: torch.Tensor, tolerance: float) -> bool:
    """``a`` holds the rows of ``b`` in another order (compared in the order of a fixed random projection)."""
    if a.shape != b.shape or a.shape[0] < 2:
        return False
    key = torch.randn(a.shape[-1], generator=torch.Generator().manual_seed(0), dtype=a.dtype)
    return torch.allclose(a[torch.argsort(a @ key)], b[torch.argsort(b @ key)], rtol=1e-3, atol=tolerance)


def _tolerance(*tensors) -> float:
    eps = max(torch.finfo(t.dtype).eps for t in tensors)
    scale = max(float(t.detach().abs().max()) for t in tensors)
    return 16 * eps * max(scale, 1.0)


def _same(a, b) -> bool:
    """Equal values, reading both as (positions, features): some blocks flatten the batch (OPT's feed-forward)."""
    if a is b:
        return True
    if not _alike(a, b) or a.dtype != b.dtype:
        return False
    return bool(torch.equal(_flat(a), _flat(b)))


def _alike(a, b) -> bool:
    return a is not None and b is not None and a.dim() > 0 and b.dim() > 0 and a.shape[-1] == b.shape[-1] and \
        a.numel() == b.numel()


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])


def _distinct(tensors: list) -> list:
    out = []
    for t in tensors:
        if not any(_same(t, o) for o in out):
            out.append(t)
    return out


def _post_norm(z, z_time: int, inside: list[_Call]) -> Optional[_Call]:
    """A parameter-light module (a LayerNorm) that reads ``z`` first and returns a tensor of its shape."""
    for call in inside:
        if call.start < z_time - 1 or call.first_input is None:
            continue
        if _same(call.first_input, z) and _alike(call.output, z) and \
                _is_elementwise(call.module) and not _same(call.output, z):
            return call
    return None


def _is_elementwise(module: nn.Module) -> bool:
    """Norms, scales, dropouts: no parameter with more than one dimension."""
    return all(p.dim() <= 1 for p in module.parameters()) and not any(
        _is_projection(m) for m in module.modules())


def _is_projection(module: nn.Module) -> bool:
    if _is_tuner_layer(module):
        return True
    if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
        return True
    weight = getattr(module, "weight", None)
    return torch.is_tensor(weight) and weight.dim() == 2 and not list(module.children()) and not isinstance(
        module, nn.Embedding)


def _is_tuner_layer(module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return isinstance(module, BaseTunerLayer)


def _sublayers(stream, since: int, z_reader, branches, inside: list[_Call], item: str, norm) -> list[Sublayer]:
    out = []
    for branch, scaled in branches:
        found = _branch_modules(branch, since, inside)
        if found is None:
            continue
        projection, block, altered = found
        role = "attention" if _is_attention(projection, block, item) else "ffn"
        sites = (None, None)
        if not scaled and not altered:
            layer_norm = norm.name if norm is not None else None
            sites = tuple(_site(stream, since, inside, target, layer_norm) for target in (projection, block))
        source = _input_source(stream, since, inside, block)
        out.append(Sublayer(role, projection.name, block.name, source, *sites))
    return out


def _branch_modules(branch, since: int, inside: list[_Call]):
    """(projection call, outermost block call, altered) for a branch tensor. Walks back through modules without
    weights (dropout, drop-path, a norm or scale applied to the branch) and through a per-channel scale or a
    reordering of positions done outside any module; ``altered`` when any of them changed the values (then the
    residual settings do not apply, but a position-wise adapter on the projection still does)."""
    core, altered, limit = branch, False, None
    for _ in range(6):
        producers = [c for c in inside if c.start >= since and (limit is None or c.end <= limit)
                     and _same(c.output, core)]
        if not producers:
            related = _related_output(core, since, limit, inside)
            if related is None:
                return None
            core, altered = related.output, True
            continue
        projections = [c for c in producers if _is_projection(c.module)]
        weighted = [c for c in producers if any(p.dim() >= 2 for p in c.module.parameters())
                    and not any(isinstance(m, nn.Embedding) for m in c.module.modules())]
        if projections or weighted:
            break
        innermost = max(producers, key=lambda c: c.start)
        if innermost.first_input is None or not _is_elementwise(innermost.module):
            return None
        altered = altered or not _same(innermost.output, innermost.first_input)
        core, limit = innermost.first_input, innermost.start
    else:
        return None
    if projections:
        projection = max(projections, key=lambda c: c.start)  # the innermost: called last among equals
    else:
        projection = min(weighted, key=lambda c: c.name.count("."))  # a whole block (fused experts)
    containing = [c for c in producers if projection.name == c.name or projection.name.startswith(c.name + ".")]
    block = min(containing, key=lambda c: c.name.count("."))
    return projection, block, altered


def _related_output(core, since: int, limit, inside: list[_Call]) -> Optional[_Call]:
    """The latest module output that ``core`` is a per-channel scaling or a reordering of positions of."""
    target = _flat(core).float()
    tolerance = _tolerance(core)
    for call in sorted(inside, key=lambda c: -c.end):
        if call.start < since or (limit is not None and call.end > limit) or not _alike(call.output, core):
            continue
        b = _flat(call.output).float()
        scale = (target * b).sum(0) / (b * b).sum(0).clamp_min(1e-12)
        if bool((scale.abs() > 1e-3).all()) and torch.allclose(target, scale * b, rtol=1e-3, atol=tolerance):
            return call
        if _rows_permuted(target, b, tolerance):
            return call
    return None


def _is_attention(projection: _Call, block: _Call, item: str) -> bool:
    relative = projection.name[len(item) + 1:].split(".")
    words = [a.lower() for a in relative] + [type(block.module).__name__.lower(),
                                              type(projection.module).__name__.lower()]
    return any(w in word for word in words for w in _ATTENTION_WORDS)


def _site(stream, since: int, inside: list[_Call], target: _Call, layer_norm: Optional[str]):
    """Where the residual ``stream`` can be captured for ``target``: the latest module called before it (an
    enclosing one included) that received exactly that tensor, norms and containers before projections."""
    receivers = []
    for call in inside:
        if call.start < since or call.start >= target.start or call.name == target.name or call.name.startswith(target.name + "."):
            continue
        for position, keyword, tensor in call.inputs:
            if _same(tensor, stream):
                receivers.append((not _is_projection(call.module), call.start, call, position, keyword))
                break
    if not receivers:
        return None
    _, _, call, position, keyword = max(receivers, key=lambda r: (r[0], r[1]))
    return BlockSite((call.name, (position, keyword or "")), layer_norm)


def _input_source(stream, since: int, inside: list[_Call], target: _Call) -> Optional[str]:
    """A module called before ``target`` whose first input is ``stream`` (a parallel adapter reads it)."""
    sources = [(not _is_projection(c.module), c.start, c.name) for c in inside
               if since <= c.start < target.start and not c.name.startswith(target.name + ".")
               and c.first_input is not None and _same(c.first_input, stream) and c.inputs[0][0] == 0]
    if not sources:
        return None
    return max(sources)[2]


def _first_tensor(output) -> Optional[torch.Tensor]:
    if torch.is_tensor(output):
        return output
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)) and output and torch.is_tensor(output[0]):
        return output[0]
    return None
