"""Tiny random models of architectures that are NOT in the architecture table, built from configs (nothing is
downloaded): discovery alone places their adapters. ``docs/supported-models.md`` is generated from this table
(``python tests/architectures.py --write``, checked by tests/test_discovery.py), so the published list cannot drift.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import transformers as tf

VOCAB = 64
_LM = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
           vocab_size=VOCAB, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_ENC = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=VOCAB,
            max_position_embeddings=64, pad_token_id=0)
_VIS = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, image_size=16,
            patch_size=8, num_channels=3)
_AUDIO = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, conv_dim=(8, 8),
              conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2,
              vocab_size=VOCAB)
_MOE = dict(_LM, num_local_experts=4, num_experts_per_tok=2)


@dataclass(frozen=True)
class Architecture:
    model_type: str
    family: str  # decoder, moe, encoder, encoder-decoder, vision, audio, vision-language
    build: Callable[[], torch.nn.Module]
    inputs: Callable[[int], dict]
    task_type: str | None

    def model(self, seed: int = 0) -> torch.nn.Module:
        torch.manual_seed(seed)
        return self.build().eval()


def _ids(batch: int, length: int = 6, seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _seq2seq(batch: int) -> dict:
    inputs = _ids(batch)
    inputs["decoder_input_ids"] = _ids(batch, 4, seed=2)["input_ids"]
    return inputs


def _pixels(batch: int, size: int = 16) -> dict:
    return {"pixel_values": torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))}


def _audio(batch: int) -> dict:
    return {"input_values": torch.randn(batch, 400, generator=torch.Generator().manual_seed(1))}


def _whisper(batch: int) -> dict:
    features = torch.randn(batch, 8, 32, generator=torch.Generator().manual_seed(1))
    return {"input_features": features, "decoder_input_ids": _ids(batch, 4)["input_ids"]}


def _clip_like(batch: int) -> dict:
    return {**_ids(batch), **_pixels(batch)}


def _llava(batch: int) -> dict:
    inputs = _ids(batch)
    ids = inputs["input_ids"].clone()
    ids[:, 1:6] = VOCAB - 1  # the image token, once per image feature (CLS + 4 patches of 8x8 in a 16x16 image)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), **_pixels(batch)}


def _causal(config_cls, **extra):
    return lambda: tf.AutoModelForCausalLM.from_config(config_cls(**{**_LM, **extra}))


def _classifier(config_cls, **extra):
    return lambda: tf.AutoModelForSequenceClassification.from_config(config_cls(**{**_ENC, **extra}))


def _decoder(model_type: str, config_cls, **extra) -> Architecture:
    return Architecture(model_type, "decoder", _causal(config_cls, **extra), _ids, "CAUSAL_LM")


def _moe(model_type: str, config_cls, **extra) -> Architecture:
    build = lambda: tf.AutoModelForCausalLM.from_config(config_cls(**{**_MOE, **extra}))  # noqa: E731
    return Architecture(model_type, "moe", build, _ids, "CAUSAL_LM")


def _encoder(model_type: str, config_cls, **extra) -> Architecture:
    return Architecture(model_type, "encoder", _classifier(config_cls, **extra), _ids, "SEQ_CLS")


def _vision(model_type: str, build) -> Architecture:
    return Architecture(model_type, "vision", build, _pixels, None)


def _llava_model():
    text = tf.LlamaConfig(**_LM)
    vision = tf.CLIPVisionConfig(**_VIS, projection_dim=16)
    config = tf.LlavaConfig(text_config=text, vision_config=vision, image_token_index=VOCAB - 1,
                            vision_feature_layer=-1, vision_feature_select_strategy="full")
    return tf.LlavaForConditionalGeneration(config)


def _clip_model():
    text = dict(_ENC, projection_dim=16)
    text.pop("pad_token_id")
    return tf.CLIPModel(tf.CLIPConfig(text_config=text, vision_config=dict(_VIS, projection_dim=16),
                                      projection_dim=16))


def _siglip_model():
    text = {k: v for k, v in _ENC.items() if k != "pad_token_id"}
    return tf.SiglipModel(tf.SiglipConfig(text_config=text, vision_config=_VIS))


ARCHITECTURES: tuple[Architecture, ...] = (
    # decoder LLMs
    _decoder("gemma2", tf.Gemma2Config, head_dim=8),
    Architecture("gemma3_text", "decoder", lambda: tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(**_LM, head_dim=8)),
                 _ids, "CAUSAL_LM"),
    _decoder("phi", tf.PhiConfig),
    _decoder("olmo", tf.OlmoConfig),
    _decoder("olmo2", tf.Olmo2Config),
    _decoder("falcon", tf.FalconConfig, new_decoder_architecture=False, multi_query=True),
    Architecture("gptj", "decoder", lambda: tf.GPTJForCausalLM(tf.GPTJConfig(
        n_layer=2, n_embd=32, n_head=4, rotary_dim=4, vocab_size=VOCAB, n_positions=64, pad_token_id=0)), _ids,
        "CAUSAL_LM"),
    _decoder("granite", tf.GraniteConfig, residual_multiplier=0.5),
    _decoder("starcoder2", tf.Starcoder2Config),
    _decoder("cohere", tf.CohereConfig),
    _decoder("stablelm", tf.StableLmConfig),
    Architecture("bloom", "decoder", lambda: tf.BloomForCausalLM(tf.BloomConfig(
        n_layer=2, hidden_size=32, n_head=4, vocab_size=VOCAB, pad_token_id=0)), _ids, "CAUSAL_LM"),
    _decoder("smollm3", tf.SmolLM3Config),
    _decoder("glm", tf.GlmConfig, head_dim=8),
    # mixture of experts
    _moe("mixtral", tf.MixtralConfig),
    _moe("qwen2_moe", tf.Qwen2MoeConfig, num_experts=4, moe_intermediate_size=16, shared_expert_intermediate_size=32,
         decoder_sparse_step=1),
    _moe("qwen3_moe", tf.Qwen3MoeConfig, num_experts=4, moe_intermediate_size=16, decoder_sparse_step=1, head_dim=8),
    _moe("olmoe", tf.OlmoeConfig, num_experts=4),
    # encoders
    _encoder("deberta", tf.DebertaConfig),
    Architecture("albert", "encoder", lambda: tf.AlbertForSequenceClassification(tf.AlbertConfig(
        **_ENC, embedding_size=16)), _ids, "SEQ_CLS"),
    _encoder("modernbert", tf.ModernBertConfig, global_attn_every_n_layers=2, local_attention=8),
    _encoder("mpnet", tf.MPNetConfig),
    _encoder("camembert", tf.CamembertConfig),
    _encoder("xlm-roberta-xl", tf.XLMRobertaXLConfig),
    _encoder("megatron-bert", tf.MegatronBertConfig),
    # encoder-decoders
    Architecture("whisper", "encoder-decoder", lambda: tf.WhisperForConditionalGeneration(tf.WhisperConfig(
        encoder_layers=2, decoder_layers=2, d_model=32, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=VOCAB, num_mel_bins=8, max_source_positions=16,
        max_target_positions=32, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)),
        _whisper, None),  # PEFT's SEQ_2_SEQ_LM wrapper passes input_ids, which Whisper does not take
    Architecture("pegasus", "encoder-decoder", lambda: tf.PegasusForConditionalGeneration(tf.PegasusConfig(
        encoder_layers=2, decoder_layers=2, d_model=32, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=VOCAB, max_position_embeddings=64, pad_token_id=0,
        decoder_start_token_id=0)), _seq2seq, "SEQ_2_SEQ_LM"),
    Architecture("marian", "encoder-decoder", lambda: tf.MarianMTModel(tf.MarianConfig(
        encoder_layers=2, decoder_layers=2, d_model=32, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=VOCAB, max_position_embeddings=64, pad_token_id=0,
        decoder_start_token_id=0)), _seq2seq, "SEQ_2_SEQ_LM"),
    Architecture("umt5", "encoder-decoder", lambda: tf.UMT5ForConditionalGeneration(tf.UMT5Config(
        num_layers=2, num_decoder_layers=2, d_model=32, d_ff=64, num_heads=4, d_kv=8, vocab_size=VOCAB,
        decoder_start_token_id=0, pad_token_id=0)), _seq2seq, "SEQ_2_SEQ_LM"),
    # vision
    _vision("beit", lambda: tf.BeitForImageClassification(tf.BeitConfig(**_VIS, num_labels=2))),
    _vision("deit", lambda: tf.DeiTForImageClassification(tf.DeiTConfig(**_VIS, num_labels=2))),
    _vision("dinov2", lambda: tf.Dinov2ForImageClassification(tf.Dinov2Config(**_VIS, num_labels=2))),
    _vision("swin", lambda: tf.SwinForImageClassification(tf.SwinConfig(
        image_size=16, patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4, num_labels=2))),
    _vision("vit_msn", lambda: tf.ViTMSNForImageClassification(tf.ViTMSNConfig(**_VIS, num_labels=2))),
    # audio
    Architecture("wav2vec2", "audio", lambda: tf.Wav2Vec2ForSequenceClassification(tf.Wav2Vec2Config(**_AUDIO)),
                 _audio, None),
    Architecture("hubert", "audio", lambda: tf.HubertForSequenceClassification(tf.HubertConfig(**_AUDIO)), _audio,
                 None),
    Architecture("wavlm", "audio", lambda: tf.WavLMForSequenceClassification(tf.WavLMConfig(
        **_AUDIO, num_buckets=8, max_bucket_distance=16)), _audio, None),
    # vision-language
    Architecture("clip", "vision-language", _clip_model, _clip_like, None),
    Architecture("siglip", "vision-language", _siglip_model, _clip_like, None),
    Architecture("llava", "vision-language", _llava_model, _llava, None),
)


def by_type(model_type: str) -> Architecture:
    return next(a for a in ARCHITECTURES if a.model_type == model_type)


def supported_models_page(table_types) -> str:
    """docs/supported-models.md: the table's types and every type of ARCHITECTURES, by family."""
    lines = ["# Supported models", "",
             "Generated by `python tests/architectures.py --write` from the suite's tables.", "",
             "Other architectures: adapter positions are found from the model itself (see "
             "[Any model](any-model.md)); nothing needs to be registered.", "",
             "## Positions fixed by the architecture table (AdapterHub's models)", "",
             ", ".join(f"`{t}`" for t in sorted(table_types)), "",
             "Each one in tests/conftest.py's table is also placed by discovery alone, with the same targets and the "
             "same outputs for random Houlsby, Pfeiffer, parallel and block-skipping adapters "
             "(`test_discovery_alone_finds_the_table_positions`).", ""]
    families = {}
    for arch in ARCHITECTURES:
        families.setdefault(arch.family, []).append(arch.model_type)
    lines += ["## Positions found by discovery", "",
              "Each type below is tested with a tiny random model built from its config, for every adapter kind "
              "(Houlsby, Pfeiffer, parallel, Compacter, Compacter++, low-rank, the controller, the hypernetwork, the "
              "LM-head adapter where the model has a head), with default targets: identity at init, a perturbed "
              "adapter changes the output, gradients reach every adapter tensor, save / reload exact, mixed "
              "`adapter_names` (or tasks) equal one by one (`test_every_kind_on_every_discovered_architecture`). "
              "Not covered: per-example `adapter_names` on Swin (its attention sees windows, not examples) and the "
              "hypernetwork on Swin (its stages differ in width; refused by name).", "",
              "| family | model types |", "|---|---|"]
    lines += [f"| {family} | {', '.join(f'`{t}`' for t in types)} |" for family, types in families.items()]
    return "\n".join(lines) + "\n"


SUPPORTED_MODELS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "supported-models.md"
README = Path(__file__).resolve().parent.parent / "README.md"
README_MARKERS = ("<!-- supported-models: generated by tests/architectures.py --write -->", "<!-- /supported-models -->")


def supported_models_readme(table_types) -> str:
    """The README's list of tested model types (between README_MARKERS): the suite's two tables of tiny models."""
    from conftest import ALL_TYPES

    tested = sorted(set(ALL_TYPES) | {a.model_type for a in ARCHITECTURES})
    return (f"Tested with tiny models built from configs ({len(tested)} model types; what each is tested with: "
            "docs/supported-models.md): "
            + ", ".join(f"`{t}`" for t in tested) + ". Any other architecture: positions are found from the model "
            "itself ([supported models](docs/supported-models.md)).")


def readme_with_list(text: str, table_types) -> str:
    start, end = README_MARKERS
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    return f"{before}{start}\n{supported_models_readme(table_types)}\n{end}{after}"

if __name__ == "__main__" and "--write" in sys.argv:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from peft_bottleneck.target_modules import ADAPTER_POSITIONS

    SUPPORTED_MODELS_PAGE.parent.mkdir(exist_ok=True)
    SUPPORTED_MODELS_PAGE.write_text(supported_models_page(ADAPTER_POSITIONS))
    README.write_text(readme_with_list(README.read_text(), ADAPTER_POSITIONS))
