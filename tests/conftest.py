"""Tiny random models of every supported architecture, built from configs (nothing is downloaded)."""

from __future__ import annotations

import os

import pytest
import torch
import transformers as tf

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import peft_bottleneck  # noqa: E402,F401  (registers the tuner types)

VOCAB = 64
_DECODER = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_ENCODER = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                vocab_size=VOCAB, max_position_embeddings=64, pad_token_id=0)

CONFIGS = {
    "bert": lambda: tf.BertConfig(**_ENCODER),
    "roberta": lambda: tf.RobertaConfig(**_ENCODER),
    "xlm-roberta": lambda: tf.XLMRobertaConfig(**_ENCODER),
    "electra": lambda: tf.ElectraConfig(**_ENCODER, embedding_size=32),
    "deberta-v2": lambda: tf.DebertaV2Config(**_ENCODER),
    "distilbert": lambda: tf.DistilBertConfig(n_layers=2, dim=32, n_heads=4, hidden_dim=64, vocab_size=VOCAB,
                                              max_position_embeddings=64, pad_token_id=0),
    "gpt2": lambda: tf.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=64,
                                  pad_token_id=0, bos_token_id=1, eos_token_id=2),
    "gpt_neox": lambda: tf.GPTNeoXConfig(**{k: v for k, v in _DECODER.items() if k != "num_key_value_heads"}),
    "opt": lambda: tf.OPTConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, ffn_dim=64,
                                word_embed_proj_dim=32, vocab_size=VOCAB, max_position_embeddings=64,
                                pad_token_id=0),
    "llama": lambda: tf.LlamaConfig(**_DECODER, tie_word_embeddings=True),
    "mistral": lambda: tf.MistralConfig(**_DECODER),
    "qwen2": lambda: tf.Qwen2Config(**_DECODER),
    "qwen3": lambda: tf.Qwen3Config(**_DECODER, head_dim=8),
    "gemma": lambda: tf.GemmaConfig(**_DECODER, head_dim=8),
    "phi3": lambda: tf.Phi3Config(**_DECODER),
    "t5": lambda: tf.T5Config(num_layers=2, num_decoder_layers=2, d_model=32, d_ff=64, num_heads=4, d_kv=8,
                              vocab_size=VOCAB, decoder_start_token_id=0, pad_token_id=0),
    "bart": lambda: tf.BartConfig(encoder_layers=2, decoder_layers=2, d_model=32, encoder_attention_heads=4,
                                  decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                  vocab_size=VOCAB, max_position_embeddings=64, pad_token_id=0,
                                  bos_token_id=1, eos_token_id=2, decoder_start_token_id=2),
    "vit": lambda: tf.ViTConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                                image_size=16, patch_size=8, num_labels=2),
}

ENCODERS = ("bert", "roberta", "xlm-roberta", "electra", "deberta-v2", "distilbert")
DECODERS = ("gpt2", "gpt_neox", "opt", "llama", "mistral", "qwen2", "qwen3", "gemma", "phi3")
SEQ2SEQ = ("t5", "bart")
ALL_TYPES = tuple(CONFIGS)


def tiny_model(model_type: str, seed: int = 0):
    """A randomly initialised model with a task head: classification, causal LM, seq2seq LM or image classes."""
    torch.manual_seed(seed)
    config = CONFIGS[model_type]()
    if model_type in SEQ2SEQ:
        model = tf.AutoModelForSeq2SeqLM.from_config(config)
    elif model_type in DECODERS:
        model = tf.AutoModelForCausalLM.from_config(config)
    elif model_type == "vit":
        model = tf.ViTForImageClassification(config)
    else:
        model = tf.AutoModelForSequenceClassification.from_config(config)
    return model.eval()


def task_type(model_type: str) -> str:
    if model_type in SEQ2SEQ:
        return "SEQ_2_SEQ_LM"
    if model_type in DECODERS:
        return "CAUSAL_LM"
    return "SEQ_CLS"


def tiny_inputs(model_type: str, batch: int = 3, length: int = 6, seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    if model_type == "vit":
        return {"pixel_values": torch.randn(batch, 3, 16, 16, generator=generator)}
    ids = torch.randint(3, VOCAB, (batch, length), generator=generator)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if model_type in SEQ2SEQ:
        inputs["decoder_input_ids"] = torch.randint(3, VOCAB, (batch, 4), generator=generator)
    return inputs


def model_output(model, inputs) -> torch.Tensor:
    return model(**inputs).logits


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
