"""The main job and the command line as a user meets them: checked arguments, results on disk, nothing kept that is
not needed, quiet output."""

import json
import subprocess
import sys

import pytest
from test_bundled import needs_bundles

from peft_bottleneck import RECOMMENDED_HEAD_LEARNING_RATE, BottleneckConfig, recommended_learning_rate
from peft_bottleneck.finetune import main


def cli(*args, cwd="/"):
    return subprocess.run([sys.executable, "-m", "peft_bottleneck.finetune", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def fails_with(args, capsys):
    """Run the main job in this process with arguments it must refuse: argparse's exit code and message."""
    with pytest.raises(SystemExit) as done:
        main(args)
    return done.value.code, capsys.readouterr().err


def test_help_names_the_command(capsys):
    code, _ = fails_with(["--help"], capsys)
    assert code == 0


def test_help_in_a_process_of_its_own():
    done = cli("--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: python -m peft_bottleneck.finetune")


@pytest.mark.parametrize("args, message", [
    (["--data-csv", "/nonexistent.csv"], "--data-csv /nonexistent.csv: no such file"),
    (["--batch-size", "0"], "--batch-size must be a positive integer"),
    (["--epochs", "-1"], "--epochs must be positive"),
    (["--model-path", "/tmp"], "holds no model"),
    (["--adapter", "lora"], "invalid choice"),
])
def test_bad_arguments_are_one_line_and_exit_2(args, message, capsys):
    code, err = fails_with(args, capsys)
    assert code == 2 and message in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("python -m peft_bottleneck.finetune: error:")


def test_a_csv_without_labels_is_refused(tmp_path, capsys):
    csv = tmp_path / "data.csv"
    csv.write_text("text,stars\nfine,1\n")
    code, err = fails_with(["--data-csv", str(csv)], capsys)
    assert code == 2 and "missing ['label']" in err


@needs_bundles
def test_main_job_writes_results_a_plot_and_no_checkpoints(tmp_path):
    results = main(["--output-dir", str(tmp_path), "--max-train-samples", "64", "--max-eval-samples", "64",
                    "--epochs", "1", "--batch-size", "16"])
    assert [r.name for r in results] == ["houlsby", "head-only"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "results.json", "results.md", "results.png"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["name"] for r in saved["runs"]] == ["houlsby", "head-only"]
    assert saved["runs"][0]["learning_rate"] == recommended_learning_rate(BottleneckConfig())  # no --learning-rate
    # the new head trains at its own rate, beside the adapter and alone in the baseline
    assert saved["runs"][0]["head_learning_rate"] == RECOMMENDED_HEAD_LEARNING_RATE
    assert saved["runs"][1]["learning_rate"] == RECOMMENDED_HEAD_LEARNING_RATE
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["history"] for r in saved["runs"])
    assert any("eval_accuracy" in e for e in saved["runs"][0]["history"])
    assert "| houlsby |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.png").stat().st_size > 10_000


@needs_bundles
def test_another_adapter_and_data_set_quietly(tmp_path):
    done = cli("--output-dir", str(tmp_path), "--adapter", "compacter++", "--dataset", "topic", "--max-train-samples",
               "32", "--max-eval-samples", "32", "--epochs", "1", "--skip-baseline")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "compacter++: test accuracy" in done.stdout
    for noise in ("LOAD REPORT", "FutureWarning", "pin_memory", "\x1b[A", "Setting accelerator"):
        assert noise not in done.stdout + done.stderr, noise


def test_console_script_has_a_subcommand_per_job():
    from peft_bottleneck.cli import main as command

    with pytest.raises(SystemExit) as done:
        command(["--help"])
    assert done.value.code == 0
    for sub in (["finetune", "--help"], ["convert", "adapterhub", "--help"]):
        with pytest.raises(SystemExit) as done:
            command(sub)
        assert done.value.code == 0
    with pytest.raises(SystemExit) as done:
        command(["nope"])
    assert done.value.code == 2


def test_plots_leave_the_callers_matplotlib_backend_alone(tmp_path):
    import matplotlib

    from peft_bottleneck.compression.report import write_report
    from peft_bottleneck.finetune import RunResult, plot

    previous = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        run = RunResult("houlsby", 0.8, 0.8, 10, 1000, 1.0, 1e-3, [{"step": 1, "loss": 0.7}, {"step": 2, "eval_accuracy": 0.6}])
        plot([run], tmp_path / "results.png")
        write_report({"scores": {"a": [0.1, 0.3]}, "stack": "layers", "layers": 2}, str(tmp_path))
        assert matplotlib.get_backend() == "svg"
        assert (tmp_path / "results.png").stat().st_size > 1000 and (tmp_path / "layer_importance.png").exists()
    finally:
        matplotlib.use(previous)


def test_a_users_csv_is_used_whole_and_the_demo_says_what_it_cuts(tmp_path, capsys):
    import argparse

    from transformers import AutoTokenizer

    from peft_bottleneck.bundled import minilm_path
    from peft_bottleneck.finetune import DEMO_TRAIN_SAMPLES, build_parser, load_data

    rows = "\n".join(f"review number {i},{i % 5 + 1}" for i in range(DEMO_TRAIN_SAMPLES + 3000))
    (tmp_path / "mine.csv").write_text("text,label\n" + rows + "\n")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    args = build_parser().parse_args(["--data-csv", str(tmp_path / "mine.csv")])
    data, num_labels = load_data(args, tokenizer)
    assert len(data["train"]) + len(data["validation"]) + len(data["test"]) == DEMO_TRAIN_SAMPLES + 3000
    assert num_labels == 5
    bundled, _ = load_data(build_parser().parse_args([]), tokenizer)
    assert len(bundled["train"]) == DEMO_TRAIN_SAMPLES
    assert f"training on the first {DEMO_TRAIN_SAMPLES:,} of" in capsys.readouterr().out


def tiny_classifier(kind: str, vocab_size: int):
    from transformers import (BertConfig, BertForSequenceClassification, RobertaConfig,
                              RobertaForSequenceClassification)

    sizes = dict(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=32, num_labels=3, max_position_embeddings=80)
    if kind == "bert":
        return BertForSequenceClassification(BertConfig(**sizes))
    return RobertaForSequenceClassification(RobertaConfig(**sizes, pad_token_id=0))


@needs_bundles
def test_the_baselines_features_are_each_sentences_own_in_the_datasets_order():
    """The head-only baseline runs the encoder once, batched by length: every row must get its own sentence's
    classifier input back, in the data set's order, as if the sentence ran alone."""
    import datasets
    import torch
    from transformers import AutoTokenizer

    from peft_bottleneck.bundled import minilm_path
    from peft_bottleneck.finetune import classifier_inputs

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    model = tiny_classifier("bert", tokenizer.vocab_size).eval()
    texts = [" ".join(["word"] * (n * 7 % 23 + 1)) + f" {n}" for n in range(70)]  # lengths out of order
    rows = datasets.Dataset.from_dict({"text": texts, "label": [n % 3 for n in range(70)]})
    rows = rows.map(lambda batch: tokenizer(batch["text"]), batched=True, remove_columns=["text"])
    inputs = classifier_inputs(model, rows, tokenizer, batch_size=8)
    assert inputs.shape == (70, 16)
    with torch.inference_mode():
        for n in (0, 1, 13, 69):
            alone = model.bert(**tokenizer(texts[n], return_tensors="pt")).pooler_output[0]
            torch.testing.assert_close(torch.from_numpy(inputs[n]), alone, atol=1e-5, rtol=1e-5)


@needs_bundles
def test_a_head_that_reads_the_whole_sequence_trains_through_the_encoder(tmp_path, monkeypatch):
    """RoBERTa's head takes every position: no features to cache, so the baseline trains the classic way."""
    import datasets
    from transformers import AutoTokenizer

    from peft_bottleneck import finetune
    from peft_bottleneck.bundled import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    rows = datasets.Dataset.from_dict({"text": ["a b c", "d e", "f g h i"] * 4, "label": [0, 1, 2] * 4})
    rows = rows.map(lambda batch: tokenizer(batch["text"]), batched=True, remove_columns=["text"])
    assert finetune.classifier_inputs(tiny_classifier("roberta", tokenizer.vocab_size), rows, tokenizer) is None

    import transformers

    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained",
                        lambda path, num_labels: tiny_classifier("roberta", tokenizer.vocab_size))
    args = finetune.build_parser().parse_args(["--epochs", "1", "--batch-size", "4"])
    data = datasets.DatasetDict(train=rows, validation=rows, test=rows)
    model, _, result = finetune.train_head_only("unused", 3, args, data, tokenizer, 1e-2, tmp_path)
    assert result.name == "head-only" and result.history and 0 <= result.accuracy <= 1
    assert result.trainable == sum(p.numel() for p in model.classifier.parameters())


@needs_bundles
def test_the_kept_baseline_is_the_trained_head_on_the_frozen_encoder(tmp_path):
    """--keep-baseline saves the model the baseline's accuracy was measured on: the frozen encoder and the trained head."""
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    from peft_bottleneck.bundled import minilm_path
    from peft_bottleneck.finetune import build_parser, load_data

    argv = ["--output-dir", str(tmp_path), "--max-train-samples", "64", "--max-eval-samples", "48", "--epochs", "1",
            "--batch-size", "16", "--keep-baseline"]
    main(argv)
    reported = json.loads((tmp_path / "results.json").read_text())["runs"][1]
    kept = AutoModelForSequenceClassification.from_pretrained(tmp_path / "head-only").eval()
    fresh = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    frozen = {name: weight for name, weight in fresh.state_dict().items() if not name.startswith("classifier")}
    assert all(kept.state_dict()[name].equal(weight) for name, weight in frozen.items())

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    test = load_data(build_parser().parse_args(argv), tokenizer)[0]["test"]
    with torch.inference_mode():
        logits = kept(**DataCollatorWithPadding(tokenizer)(test.remove_columns("label").to_list())).logits
    accuracy = float(np.mean(logits.argmax(-1).numpy() == np.array(test["label"])))
    assert accuracy == pytest.approx(reported["accuracy"])
