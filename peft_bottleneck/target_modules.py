"""Where adapters go: overrides by ``config.model_type``, for architectures whose positions are fixed by hand.

Any other model's positions are found from the model itself (``discovery.py``); this table is a small set of
overrides (AdapterHub's own model list, whose outputs the converter reproduces exactly) and the cross-check that
discovery finds the same places (tests/test_discovery.py). ``register_positions`` adds an entry for a model type
discovery cannot read.

Names are module-name suffixes in PEFT's list form (exact name or ``endswith("." + name)``), so
``layers_to_transform`` and ``layers_pattern`` keep working on the defaults; discovered positions use full module
names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class BlockSite:
    """Where a block's residual input and LayerNorm are, for the module an adapter wraps (AdapterHub's
    ``input_tensor`` and ``layer_norm``). Names are relative to the layer that holds the module.

    residual: (module, (position, keyword)): the residual input is that argument of that module's call, passed by
        position or by keyword (position None: by keyword only; "" as the module: the layer itself).
    layer_norm: the LayerNorm the block applies to ``module output + residual`` (post-LN models); None where the
        model only adds the residual (pre-LN models).
    """

    residual: tuple[str, tuple[int, str]]
    layer_norm: Optional[str] = None


@dataclass(frozen=True)
class AdapterPositions:
    """The adapter positions of one architecture.

    attention_output: output projection of every attention block (self-attention and, in encoder-decoders,
        cross-attention): the first Houlsby position.
    ffn_output: output projection of every feed-forward block: the second Houlsby position and the Pfeiffer one.
    ffn_block: what a parallel adapter wraps: its output receives the adapter's contribution.
    ffn_input_from: where a parallel adapter on a ``ffn_block`` entry reads its input: the sibling module whose input
        is the block's residual input, as AdapterHub's parallel adapters read it (BERT's ``intermediate``; in pre-LN
        decoders the feed-forward LayerNorm, whose input is the residual stream).
    sites: for the output projections, where the block's residual input and LayerNorm are (``BlockSite``), used by
        settings such as ``original_ln_before``.
    """

    attention_output: tuple[str, ...]
    ffn_output: tuple[str, ...]
    ffn_block: tuple[str, ...]
    ffn_input_from: dict[str, str] = field(default_factory=dict)
    sites: dict[str, BlockSite] = field(default_factory=dict)


def _pre_ln(norm: str) -> BlockSite:
    """A pre-LN block: its residual input is the input of the LayerNorm in front of it; the model only adds it."""
    return BlockSite((norm, (0, "hidden_states")))


_BERT_LIKE = AdapterPositions(
    attention_output=("attention.output.dense",),
    ffn_output=("output.dense",),
    ffn_block=("output.dense",),
    ffn_input_from={"output.dense": "intermediate"},
    sites={
        "attention.output.dense": BlockSite(("attention.output", (1, "input_tensor")), "attention.output.LayerNorm"),
        "output.dense": BlockSite(("output", (1, "input_tensor")), "output.LayerNorm"),
    },
)
_LLAMA_LIKE = AdapterPositions(
    attention_output=("self_attn.o_proj",),
    ffn_output=("mlp.down_proj",),
    ffn_block=("mlp",),
    ffn_input_from={"mlp": "post_attention_layernorm"},
    sites={
        "self_attn.o_proj": _pre_ln("input_layernorm"),
        "mlp.down_proj": _pre_ln("post_attention_layernorm"),
        "mlp": _pre_ln("post_attention_layernorm"),
    },
)
_BART_LIKE = AdapterPositions(
    attention_output=("self_attn.out_proj", "encoder_attn.out_proj"),
    ffn_output=("fc2",),
    ffn_block=("fc2",),
    ffn_input_from={"fc2": "fc1"},
    sites={
        "self_attn.out_proj": BlockSite(("self_attn", (0, "hidden_states")), "self_attn_layer_norm"),
        "encoder_attn.out_proj": BlockSite(("encoder_attn", (0, "hidden_states")), "encoder_attn_layer_norm"),
        "fc2": BlockSite(("fc1", (0, "input")), "final_layer_norm"),
    },
)
# mBART normalises before each sublayer (pre-LN), unlike BART; AdapterHub's mBART passes no LayerNorm either
_MBART = AdapterPositions(
    attention_output=("self_attn.out_proj", "encoder_attn.out_proj"),
    ffn_output=("fc2",),
    ffn_block=("fc2",),
    ffn_input_from={"fc2": "final_layer_norm"},
    sites={
        "self_attn.out_proj": _pre_ln("self_attn_layer_norm"),
        "encoder_attn.out_proj": _pre_ln("encoder_attn_layer_norm"),
        "fc2": _pre_ln("final_layer_norm"),
    },
)
_T5_LIKE = AdapterPositions(
    attention_output=("SelfAttention.o", "EncDecAttention.o"),
    ffn_output=("DenseReluDense.wo",),
    ffn_block=("DenseReluDense",),
    ffn_input_from={"DenseReluDense": "layer_norm"},
    sites={name: _pre_ln("layer_norm") for name in
           ("SelfAttention.o", "EncDecAttention.o", "DenseReluDense.wo", "DenseReluDense")},
)

ADAPTER_POSITIONS: dict[str, AdapterPositions] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "deberta-v2": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "distilbert": AdapterPositions(
        attention_output=("attention.out_lin",),
        ffn_output=("ffn.lin2",),
        ffn_block=("ffn",),
        sites={
            "attention.out_lin": BlockSite(("attention", (0, "query")), "sa_layer_norm"),
            "ffn.lin2": BlockSite(("ffn", (0, "input")), "output_layer_norm"),
            "ffn": BlockSite(("ffn", (0, "input")), "output_layer_norm"),
        },
    ),
    "gpt2": AdapterPositions(
        attention_output=("attn.c_proj",),
        ffn_output=("mlp.c_proj",),
        ffn_block=("mlp",),
        ffn_input_from={"mlp": "ln_2"},
        sites={
            "attn.c_proj": _pre_ln("ln_1"),
            "mlp.c_proj": _pre_ln("ln_2"),
            "mlp": _pre_ln("ln_2"),
        },
    ),
    "gpt_neox": AdapterPositions(
        attention_output=("attention.dense",),
        ffn_output=("mlp.dense_4h_to_h",),
        ffn_block=("mlp",),
        ffn_input_from={"mlp": "post_attention_layernorm"},
        sites={
            "attention.dense": _pre_ln("input_layernorm"),
            "mlp.dense_4h_to_h": _pre_ln("post_attention_layernorm"),
            "mlp": _pre_ln("post_attention_layernorm"),
        },
    ),
    # OPT as its decoders are built by default (do_layer_norm_before=True, pre-LN)
    "opt": AdapterPositions(
        attention_output=("self_attn.out_proj",),
        ffn_output=("fc2",),
        ffn_block=("fc2",),
        ffn_input_from={"fc2": "final_layer_norm"},
        sites={"self_attn.out_proj": _pre_ln("self_attn_layer_norm"), "fc2": _pre_ln("final_layer_norm")},
    ),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    # Gemma 2 norms the attention and feed-forward outputs before the residual add: no sites for the residual
    "gemma2": AdapterPositions(
        attention_output=("self_attn.o_proj",),
        ffn_output=("mlp.down_proj",),
        ffn_block=("mlp",),
        ffn_input_from={"mlp": "pre_feedforward_layernorm"},
    ),
    "phi3": _LLAMA_LIKE,
    "t5": _T5_LIKE,
    "mt5": _T5_LIKE,
    "bart": _BART_LIKE,
    "mbart": _MBART,
    "vit": AdapterPositions(
        attention_output=("attention.o_proj",),
        ffn_output=("mlp.fc2",),
        ffn_block=("mlp",),
        ffn_input_from={"mlp": "layernorm_after"},
        sites={
            "attention.o_proj": _pre_ln("layernorm_before"),
            "mlp.fc2": _pre_ln("layernorm_after"),
            "mlp": _pre_ln("layernorm_after"),
        },
    ),
}


def register_positions(model_type: str, positions: AdapterPositions) -> None:
    """Fix the adapter positions of ``model_type`` by hand (names relative to a block, as in the table), for an
    architecture whose positions discovery cannot read; it overrides discovery for every model of that type."""
    if not isinstance(model_type, str) or not model_type:
        raise TypeError(f"`model_type` must be a non-empty string (a config's model_type), got {model_type!r}.")
    if not isinstance(positions, AdapterPositions):
        raise TypeError(f"`positions` must be an AdapterPositions, got {type(positions).__name__}.")
    ADAPTER_POSITIONS[model_type] = positions


def positions_for(model_type: str | None, config_name: str) -> AdapterPositions:
    """The table's positions for ``model_type``, or a ValueError that says what to pass instead."""
    positions = ADAPTER_POSITIONS.get(model_type or "")
    if positions is None:
        raise ValueError(
            f"{config_name} has no default adapter positions for model_type={model_type!r} (known: "
            f"{sorted(ADAPTER_POSITIONS)}). Pass `target_modules` with the names of the modules to adapt, e.g. "
            f"{config_name}(target_modules=['o_proj', 'down_proj']) for the attention and feed-forward output "
            "projections."
        )
    return positions


def colliding_names(names: tuple[str, ...], targets: tuple[str, ...]) -> list[str]:
    """Entries of ``names`` that PEFT's suffix matching would also match with ``targets``.

    BERT's feed-forward output is ``output.dense``, a suffix of the attention output ``attention.output.dense``: to
    adapt only the former, the latter must be excluded explicitly.
    """
    return [name for name in names if any(name == t or name.endswith("." + t) for t in targets)]


def output_embeddings_name(model) -> str:
    """The module name of ``model.get_output_embeddings()`` (the LM head), or a ValueError if it has none."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if get_head is not None else None
    if head is None:
        raise ValueError(
            f"{type(model).__name__} has no output embeddings (`get_output_embeddings()` is None): an LM-head "
            "adapter needs a model with a language-modelling head, e.g. AutoModelForCausalLM or "
            "AutoModelForSeq2SeqLM."
        )
    for name, module in model.named_modules():
        if module is head:
            return name
    raise ValueError("The output embeddings returned by get_output_embeddings() are not a submodule of the model.")


def _layer_prefix(current_key: str, target: str) -> Optional[str]:
    """The part of ``current_key`` before ``target`` (with its dot), or None if ``target`` is not its suffix."""
    if current_key == target:
        return ""
    if current_key.endswith("." + target):
        return current_key[: len(current_key) - len(target)]
    return None


def _longest_match(current_key: str, names) -> Optional[tuple[str, str]]:
    """(name, layer prefix) of the longest of ``names`` that is a suffix of ``current_key``."""
    matches = [(n, p) for n in names if (p := _layer_prefix(current_key, n)) is not None]
    return max(matches, key=lambda m: len(m[0])) if matches else None


def input_source_for(input_from: Optional[dict], current_key: str, other_positions=()) -> Optional[str]:
    """The name of the module whose input a parallel adapter at ``current_key`` reads (``input_from``), or None. A
    longer position name in ``other_positions`` that also matches wins (BERT's ``attention.output.dense`` is not the
    feed-forward ``output.dense``)."""
    match = _longest_match(current_key, [*(input_from or {}).keys(), *other_positions])
    if match is None or match[0] not in (input_from or {}):
        return None
    target, prefix = match
    return prefix + input_from[target]


def block_context_for(model, positions: Optional[AdapterPositions], current_key: str, why: str = ""):
    """(residual module, its argument, LayerNorm module or None) of the block around ``current_key``."""
    match = _longest_match(current_key, positions.sites) if positions is not None else None
    if match is None:
        raise ValueError(
            f"`original_ln_before=True` / `original_ln_after=False` need the residual input and LayerNorm of the "
            f"block around {current_key!r}, and none is known for it{why}: the table and discovery name them only "
            "for the default positions (attention and feed-forward outputs whose branch is added to the residual "
            "unchanged). Use the defaults (original_ln_before=False, original_ln_after=True) here, or register "
            "the positions with `peft_bottleneck.register_positions`."
        )
    target, prefix = match
    site = positions.sites[target]
    residual_module = model.get_submodule(prefix + site.residual[0]) if site.residual[0] else model.get_submodule(
        prefix.rstrip("."))
    layer_norm = model.get_submodule(prefix + site.layer_norm) if site.layer_norm else None
    return residual_module, site.residual[1], layer_norm
