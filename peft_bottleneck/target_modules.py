"""Where adapters go in each supported architecture, looked up by ``config.model_type`` like PEFT does for LoRA.

Names are module-name suffixes in PEFT's list form (exact name or ``endswith("." + name)``), so
``layers_to_transform`` and ``layers_pattern`` keep working on the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class AdapterPositions:
    """The adapter positions of one architecture.

    attention_output: output projection of every attention block (self-attention and, in encoder-decoders,
        cross-attention): the first Houlsby position.
    ffn_output: output projection of every feed-forward block: the second Houlsby position and the Pfeiffer one.
    ffn_block: what a parallel adapter wraps: its output receives the adapter's contribution.
    ffn_input_from: for a ``ffn_block`` entry that is only the block's last projection, the sibling module whose
        input is the block's input (BERT's ``intermediate``, BART's ``fc1``).
    """

    attention_output: tuple[str, ...]
    ffn_output: tuple[str, ...]
    ffn_block: tuple[str, ...]
    ffn_input_from: dict[str, str] = field(default_factory=dict)


_BERT_LIKE = AdapterPositions(
    attention_output=("attention.output.dense",),
    ffn_output=("output.dense",),
    ffn_block=("output.dense",),
    ffn_input_from={"output.dense": "intermediate"},
)
_LLAMA_LIKE = AdapterPositions(
    attention_output=("self_attn.o_proj",), ffn_output=("mlp.down_proj",), ffn_block=("mlp",)
)
_BART_LIKE = AdapterPositions(
    attention_output=("self_attn.out_proj", "encoder_attn.out_proj"),
    ffn_output=("fc2",),
    ffn_block=("fc2",),
    ffn_input_from={"fc2": "fc1"},
)

ADAPTER_POSITIONS: dict[str, AdapterPositions] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "deberta-v2": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "distilbert": AdapterPositions(
        attention_output=("attention.out_lin",), ffn_output=("ffn.lin2",), ffn_block=("ffn",)
    ),
    "gpt2": AdapterPositions(attention_output=("attn.c_proj",), ffn_output=("mlp.c_proj",), ffn_block=("mlp",)),
    "gpt_neox": AdapterPositions(
        attention_output=("attention.dense",), ffn_output=("mlp.dense_4h_to_h",), ffn_block=("mlp",)
    ),
    "opt": AdapterPositions(
        attention_output=("self_attn.out_proj",),
        ffn_output=("fc2",),
        ffn_block=("fc2",),
        ffn_input_from={"fc2": "fc1"},
    ),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "t5": AdapterPositions(
        attention_output=("SelfAttention.o", "EncDecAttention.o"),
        ffn_output=("DenseReluDense.wo",),
        ffn_block=("DenseReluDense",),
    ),
    "mt5": AdapterPositions(
        attention_output=("SelfAttention.o", "EncDecAttention.o"),
        ffn_output=("DenseReluDense.wo",),
        ffn_block=("DenseReluDense",),
    ),
    "bart": _BART_LIKE,
    "mbart": _BART_LIKE,
    "vit": AdapterPositions(attention_output=("attention.o_proj",), ffn_output=("mlp.fc2",), ffn_block=("mlp",)),
}


def positions_for(model_type: str | None, config_name: str) -> AdapterPositions:
    """The positions for ``model_type``, or a ValueError that says what to pass instead."""
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
