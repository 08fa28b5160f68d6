"""`peft-bottleneck train`: a user's model (a folder or a cached Hub id) and data (CSV, JSON, JSON Lines, a local
data set), the three tasks, labels of any kind, TrainingArguments passed through, one-line errors for bad input."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as tf
from peft import AutoPeftModelForSequenceClassification, PeftModel
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers import models as token_models

from peft_bottleneck import train

WORDS = ["awful", "bad", "okay", "good", "great", "film", "plot", "the", "was", "really", "not", "story"]
SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]


def tokenizer():
    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    core = Tokenizer(token_models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return tf.PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]",
                                      eos_token="[EOS]")


SIZE = dict(vocab_size=len(SPECIALS) + len(WORDS), pad_token_id=0, bos_token_id=2, eos_token_id=3)


def tiny(kind):
    torch.manual_seed(0)
    if kind == "bert":
        return tf.BertForSequenceClassification(tf.BertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, **SIZE))
    if kind == "llama":
        return tf.LlamaForCausalLM(tf.LlamaConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
            max_position_embeddings=64, **SIZE))
    return tf.T5ForConditionalGeneration(tf.T5Config(
        d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0, **SIZE))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for kind in ("bert", "llama", "t5"):
        tiny(kind).save_pretrained(root / kind)
        tokenizer().save_pretrained(root / kind)
    return root


def sentence(label: int, i: int) -> str:
    return f"the {WORDS[label % 5]} film was {WORDS[(i % 3) + 5]}"


def write_rows(path: Path, rows: list[dict]):
    if path.suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path.write_text(json.dumps(rows))
    return path


def run(argv):
    return train.main([str(a) for a in argv])


def common(tmp_path, steps=4):
    return ["--output_dir", tmp_path / "out", "--max_steps", steps, "--per_device_train_batch_size", 8,
            "--report_to", "none", "--use_cpu", "--save_strategy", "no", "--disable_tqdm", "true"]


@pytest.mark.parametrize("extension", [".csv", ".jsonl", ".json"])
def test_star_ratings_1_to_5_train_and_reload(models, tmp_path, extension):
    rows = [{"review": sentence(s, i), "stars": s + 1} for i, s in enumerate([0, 1, 2, 3, 4] * 8)]
    data = write_rows(tmp_path / f"stars{extension}", rows)
    dev = write_rows(tmp_path / f"dev{extension}", rows[:10])
    assert run(["--model_name_or_path", models / "bert", "--train_file", data, "--validation_file", dev,
                "--text_column", "review", "--label_column", "stars", "--adapter_config", "seq_bn",
                *common(tmp_path)]) == 0
    out = tmp_path / "out"
    assert json.loads((out / "id2label.json").read_text()) == {str(i): str(i + 1) for i in range(5)}
    results = json.loads((out / "all_results.json").read_text())
    assert 0 <= results["eval_accuracy"] <= 1 and "train_runtime" in results
    card = (out / "README.md").read_text()
    assert "[More Information Needed]" not in card and str(tmp_path) not in card
    assert "`stars" in card and "(40 rows)" in card and "eval_accuracy" in card and "labels: `1`, `2`" in card
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "BOTTLENECK" and config["placement"] == "pfeiffer"  # seq_bn
    # the saved head has five rows: loading needs the label count, which id2label.json gives
    labels = {int(k): v for k, v in json.loads((out / "id2label.json").read_text()).items()}
    model = AutoPeftModelForSequenceClassification.from_pretrained(out, num_labels=len(labels), id2label=labels,
                                                                   ignore_mismatched_sizes=True)  # base: 2 labels
    assert model.base_model.model.classifier.modules_to_save["default"].out_features == 5


def test_string_labels_pairs_and_all_rows_by_default(models, tmp_path):
    rows = [{"a": sentence(i % 2, i), "b": sentence(i % 3, i), "y": ["neg", "pos"][i % 2]} for i in range(300)]
    data = write_rows(tmp_path / "pairs.csv", rows)
    assert run(["--model_name_or_path", models / "bert", "--train_file", data, "--text_column", "a",
                "--text_pair_column", "b", "--label_column", "y", *common(tmp_path, steps=2)]) == 0
    assert json.loads((tmp_path / "out" / "id2label.json").read_text()) == {"0": "neg", "1": "pos"}
    assert "(300 rows)" in (tmp_path / "out" / "README.md").read_text()  # no silent cap on the user's data


def test_causal_lm_on_prompt_completion_pairs_learns_only_the_completion(models, tmp_path):
    rows = [{"prompt": "the film was", "completion": WORDS[i % 5]} for i in range(24)]
    data = write_rows(tmp_path / "pairs.jsonl", rows)
    arguments = train.DataArguments(task="causal-lm", prompt_column="prompt", completion_column="completion")
    import datasets

    encoded = train.tokenize(datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:1])}), arguments,
                             tokenizer(), None)["train"][0]
    assert encoded["labels"] == [-100, -100, -100, 4 + WORDS.index("awful"), 3]  # prompt masked, completion + EOS
    assert encoded["input_ids"][3:] == encoded["labels"][3:]
    assert run(["--task", "causal-lm", "--model_name_or_path", models / "llama", "--train_file", data,
                "--validation_file", data, "--prompt_column", "prompt", "--completion_column", "completion",
                "--adapter_config", "double_seq_bn", *common(tmp_path)]) == 0
    results = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert results["eval_perplexity"] == pytest.approx(torch.tensor(results["eval_loss"]).exp().item(), rel=1e-4)
    model = PeftModel.from_pretrained(tf.AutoModelForCausalLM.from_pretrained(models / "llama"), tmp_path / "out")
    assert model.peft_config["default"].task_type == "CAUSAL_LM"


def test_causal_lm_on_plain_text_and_seq2seq(models, tmp_path):
    text = write_rows(tmp_path / "text.csv", [{"text": sentence(i, i)} for i in range(16)])
    assert run(["--task", "causal-lm", "--model_name_or_path", models / "llama", "--train_file", text,
                *common(tmp_path, steps=2)]) == 0
    pairs = write_rows(tmp_path / "s2s.json", [{"text": sentence(i, i), "target": WORDS[i % 5]} for i in range(16)])
    assert run(["--task", "seq2seq", "--model_name_or_path", models / "t5", "--train_file", pairs,
                "--validation_file", pairs, "--adapter_config", "par_bn", *common(tmp_path / "s2s", steps=2)]) == 0
    assert "eval_loss" in json.loads((tmp_path / "s2s" / "out" / "all_results.json").read_text())


def test_a_local_dataset_folder_and_an_adapter_config_file(models, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    rows = [{"text": sentence(i % 2, i), "label": i % 2} for i in range(32)]
    write_rows(folder / "train.csv", rows)
    write_rows(folder / "validation.csv", rows[:8])
    config = tmp_path / "adapter.json"
    config.write_text(json.dumps({"peft_type": "COMPACTER", "reduction_factor": 4, "phm_dim": 2}))
    assert run(["--model_name_or_path", models / "bert", "--dataset_name", folder, "--adapter_config", config,
                *common(tmp_path, steps=2)]) == 0
    saved = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "COMPACTER" and saved["phm_dim"] == 2
    assert "eval_accuracy" in json.loads((tmp_path / "out" / "all_results.json").read_text())
    adapterhub_style = tmp_path / "bn.json"
    adapterhub_style.write_text(json.dumps({"mh_adapter": True, "output_adapter": True, "reduction_factor": 8,
                                            "non_linearity": "swish"}))
    assert train.adapter_config(str(adapterhub_style), "SEQ_CLS").reduction_factor == 8


def test_training_arguments_pass_through():
    model_args, data_args, training_args, given = train.parse(
        ["--model_name_or_path", "m", "--train_file", "t.csv", "--output_dir", "o", "--gradient_accumulation_steps",
         "4", "--learning_rate", "1e-3", "--lr_scheduler_type", "cosine", "--seed", "7", "--save_total_limit", "2",
         "--logging_steps", "3", "--warmup_steps", "0.1"])
    assert (training_args.gradient_accumulation_steps, training_args.learning_rate, training_args.seed) == (4, 1e-3, 7)
    assert training_args.lr_scheduler_type == "cosine" and training_args.save_total_limit == 2
    assert "learning_rate" in given and data_args.max_train_samples is None


def test_the_recommended_rates_unless_a_rate_is_given(models, tmp_path, monkeypatch):
    seen = []
    original = tf.Trainer.__init__

    def spy(self, *args, **kwargs):
        seen.append(kwargs["optimizers"][0])
        original(self, *args, **kwargs)

    monkeypatch.setattr(tf.Trainer, "__init__", spy)
    data = write_rows(tmp_path / "d.csv", [{"text": sentence(i % 2, i), "label": i % 2} for i in range(16)])
    base = ["--model_name_or_path", models / "bert", "--train_file", data]
    assert run([*base, *common(tmp_path, steps=1)]) == 0
    assert run([*base, "--learning_rate", "0.5", *common(tmp_path / "b", steps=1)]) == 0
    rates = [{g["name"]: g["initial_lr"] for g in optimizer.param_groups} for optimizer in seen]
    assert rates[0]["adapters"] == 3e-3 and rates[1]["adapters"] == 0.5 and rates[0]["head"] == rates[1]["head"]


def test_a_hub_id_resolves_from_the_local_cache_offline(models, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snapshot = cache / "models--tester--tiny-bert" / "snapshots" / ("0" * 40)
    snapshot.parent.mkdir(parents=True)
    import shutil

    shutil.copytree(models / "bert", snapshot)
    (cache / "models--tester--tiny-bert" / "refs").mkdir()
    (cache / "models--tester--tiny-bert" / "refs" / "main").write_text("0" * 40)
    data = write_rows(tmp_path / "d.csv", [{"text": sentence(i % 2, i), "label": i % 2} for i in range(16)])
    script = ("import sys; from peft_bottleneck import train; "
              "sys.exit(train.main(sys.argv[1:]))")
    env = {**__import__("os").environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script, "--model_name_or_path", "tester/tiny-bert", "--train_file",
                           str(data), *map(str, common(tmp_path, steps=1))], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "base_model: tester/tiny-bert" in card and "local folder" not in card
    missing = subprocess.run([sys.executable, "-c", script, "--model_name_or_path", "tester/not-cached",
                              "--train_file", str(data), "--output_dir", str(tmp_path / "x")],
                             capture_output=True, text=True, env=env)
    assert missing.returncode == 2
    assert missing.stderr.strip() == ("peft-bottleneck train: error: --model_name_or_path tester/not-cached: neither a "
                                      "local folder nor a model in the local Hugging Face cache (offline)")


BAD = {
    "missing file": (["--train_file", "nowhere.csv"], "--train_file nowhere.csv: no such file"),
    "bad extension": (["--train_file", "{tmp}/data.txt"], "extension must be one of .csv, .json, .jsonl"),
    "missing column": (["--train_file", "{tmp}/d.csv", "--text_column", "review"],
                       "--text_column 'review': not a column of the train data (columns: text, label)"),
    "unknown preset": (["--train_file", "{tmp}/d.csv", "--adapter_config", "lora"],
                       "--adapter_config 'lora': neither an AdapterHub preset (seq_bn, double_seq_bn"),
    "unknown task": (["--train_file", "{tmp}/d.csv", "--task", "regression"], "--task 'regression': must be one of"),
    "float labels": (["--train_file", "{tmp}/float.csv"], "class labels must be strings or integers, found 0.25"),
    "no data": ([], "no data: pass --train_file"),
    "half a pair": (["--train_file", "{tmp}/d.csv", "--task", "causal-lm", "--prompt_column", "text"],
                    "--prompt_column and --completion_column go together"),
    "unknown flag": (["--train_file", "{tmp}/d.csv", "--no_such_flag", "1"], "--no_such_flag"),
    "bad training value": (["--train_file", "{tmp}/d.csv", "--lr_scheduler_type", "sometimes"], "sometimes"),
    "empty cell": (["--train_file", "{tmp}/hole.csv"], "--text_column 'text': row 1 of the train data is empty"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_naming_it(case, models, tmp_path, capsys):
    write_rows(tmp_path / "d.csv", [{"text": sentence(i % 2, i), "label": i % 2} for i in range(8)])
    write_rows(tmp_path / "float.csv", [{"text": "the film", "label": v} for v in (0.25, 1.0)])
    write_rows(tmp_path / "hole.csv", [{"text": t, "label": 0} for t in ("the film", "")])
    (tmp_path / "data.txt").write_text("x")
    flags, message = BAD[case]
    argv = ["--model_name_or_path", models / "bert", "--output_dir", tmp_path / "out",
            *[f.format(tmp=tmp_path) for f in flags]]
    assert run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("peft-bottleneck train: error: ") and message in err[0], err
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_no_output_dir_and_the_console_script(tmp_path):
    done = subprocess.run([sys.executable, "-m", "peft_bottleneck.cli", "train", "--model_name_or_path", "x",
                           "--train_file", "y.csv"], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == "peft-bottleneck train: error: --output_dir is required (where the adapter, its " \
                                  "model card and the results go)"
    helped = subprocess.run([sys.executable, "-m", "peft_bottleneck.cli", "train", "--help"], capture_output=True,
                            text=True)
    assert helped.returncode == 0 and "--gradient_accumulation_steps" in helped.stdout and "--label_column" in helped.stdout


def test_class_label_columns_keep_their_ids_and_names():
    import datasets

    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    split = datasets.Dataset.from_dict({"text": ["the film", "good plot"], "label": [1, 0]}, features=features)
    splits = datasets.DatasetDict({"train": split})
    classes = train.label_names(splits, "label")
    assert classes == ["neg", "pos"]
    encoded = train.tokenize(splits, train.DataArguments(), tokenizer(), classes)["train"]
    assert encoded["labels"] == [1, 0]


def test_unlabelled_test_data_gets_predictions(models, tmp_path):
    data = write_rows(tmp_path / "d.csv", [{"text": sentence(i % 2, i), "label": ["neg", "pos"][i % 2]}
                                           for i in range(16)])
    test = write_rows(tmp_path / "test.csv", [{"text": sentence(i, i)} for i in range(5)])
    assert run(["--model_name_or_path", models / "bert", "--train_file", data, "--test_file", test,
                *common(tmp_path, steps=1)]) == 0
    import pandas

    predictions = pandas.read_csv(tmp_path / "out" / "predictions.csv")
    assert list(predictions.columns) == ["text", "prediction"] and len(predictions) == 5
    assert set(predictions["prediction"]) <= {"neg", "pos"}
