"""``peft-bottleneck train``: fine-tune your model with an adapter on your data, in the style of transformers' example
scripts (``HfArgumentParser``; every ``TrainingArguments`` flag passes through).

    peft-bottleneck train --model_name_or_path bert-base-uncased --train_file train.csv --validation_file dev.csv \\
        --adapter_config seq_bn --output_dir out
    peft-bottleneck train --task causal-lm --model_name_or_path ./my-llama --train_file pairs.jsonl \\
        --prompt_column prompt --completion_column completion --output_dir out --num_train_epochs 1 --bf16
    peft-bottleneck train args.json            # every argument from one JSON file

Tasks: sequence classification (labels of any kind: strings, or integers that need not start at 0), causal-LM
fine-tuning on text or prompt / completion pairs, sequence-to-sequence. With no ``--do_train`` / ``--do_eval`` /
``--do_predict`` it trains on the training data and evaluates on whatever validation and test data it is given.
Writes to ``--output_dir``: the adapter (PEFT's format) with its model card, the tokenizer, ``id2label.json``
(classification), and the Trainer's ``all_results.json`` / checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

PROG = "peft-bottleneck train"
TASKS = ("sequence-classification", "causal-lm", "seq2seq")
TASK_TYPES = {"sequence-classification": "SEQ_CLS", "causal-lm": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM"}
DATA_EXTENSIONS = {".csv": "csv", ".json": "json", ".jsonl": "json"}
IGNORE_INDEX = -100  # labels the loss skips (prompt tokens, padding)


class UsageError(Exception):
    """Bad input: reported as one line naming the argument, exit status 2."""


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={
        "help": "A local model folder or a Hub model id (resolved from the local Hugging Face cache when offline)."})
    adapter_config: Optional[str] = field(default=None, metadata={
        "help": "An AdapterHub preset name (seq_bn, double_seq_bn, par_bn, scaled_par_bn, seq_bn_inv, "
                "double_seq_bn_inv, compacter, compacter++, pfeiffer, houlsby, parallel, ...) or a JSON file: a "
                "saved adapter_config.json (with peft_type) or AdapterHub BnConfig fields. Default: "
                "BottleneckConfig() (Houlsby, identity at the start)."})
    adapter_name: str = field(default="default", metadata={"help": "Name of the adapter to train."})
    revision: Optional[str] = field(default=None, metadata={"help": "Hub revision of the model."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the model's own code from the Hub."})


@dataclass
class DataArguments:
    task: str = field(default="sequence-classification", metadata={"help": f"One of {', '.join(TASKS)}."})
    train_file: Optional[str] = field(default=None, metadata={"help": "Training data: .csv, .json or .jsonl."})
    validation_file: Optional[str] = field(default=None, metadata={"help": "Validation data: .csv, .json, .jsonl."})
    test_file: Optional[str] = field(default=None, metadata={"help": "Test data: .csv, .json or .jsonl."})
    dataset_name: Optional[str] = field(default=None, metadata={
        "help": "Instead of files: anything datasets.load_dataset reads here (a local folder or script, or a cached "
                "Hub data set); its train / validation / test splits are used."})
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Configuration of --dataset_name."})
    text_column: str = field(default="text", metadata={"help": "Column of the input text."})
    text_pair_column: Optional[str] = field(default=None, metadata={
        "help": "Second text column, for pairs (sequence classification)."})
    label_column: str = field(default="label", metadata={"help": "Column of the class labels."})
    prompt_column: Optional[str] = field(default=None, metadata={
        "help": "causal-lm with pairs: column of the prompts (the loss covers only the completion)."})
    completion_column: Optional[str] = field(default=None, metadata={
        "help": "causal-lm with pairs: column of the completions."})
    target_column: str = field(default="target", metadata={"help": "seq2seq: column of the target text."})
    max_seq_length: int = field(default=128, metadata={"help": "Inputs are truncated to this many tokens."})
    max_target_length: int = field(default=128, metadata={"help": "seq2seq: targets are truncated to this length."})
    max_train_samples: Optional[int] = field(default=None, metadata={
        "help": "Use only the first N training examples (for quick runs; off by default)."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Use only the first N validation "
                                                                            "examples."})
    max_predict_samples: Optional[int] = field(default=None, metadata={"help": "Use only the first N test "
                                                                               "examples."})


def build_parser():
    from transformers import HfArgumentParser, TrainingArguments

    class OneLineParser(HfArgumentParser):
        def error(self, message):  # argparse's usage block would bury the one line that matters
            raise UsageError(message)

    parser = OneLineParser((ModelArguments, DataArguments, TrainingArguments), prog=PROG, description=__doc__)
    return parser


def parse(argv: list[str]):
    parser = build_parser()
    if len(argv) == 1 and argv[0].endswith(".json"):
        if not Path(argv[0]).is_file():
            raise UsageError(f"{argv[0]}: no such file")
        given = set(json.loads(Path(argv[0]).read_text()))
        try:
            model_args, data_args, training_args = parser.parse_json_file(argv[0])
        except (ValueError, TypeError) as error:
            raise UsageError(f"{argv[0]}: {error}") from None
    else:
        given = {a[2:].split("=")[0] for a in argv if a.startswith("--")}
        try:
            model_args, data_args, training_args = parser.parse_args_into_dataclasses(argv)
        except ValueError as error:  # TrainingArguments checks its values in __post_init__
            raise UsageError(str(error).strip().splitlines()[0]) from None
    if "output_dir" not in given:
        raise UsageError("--output_dir is required (where the adapter, its model card and the results go)")
    return model_args, data_args, training_args, given


# ---- checks that need nothing loaded ----

def check_arguments(model_args: ModelArguments, data: DataArguments, training) -> None:
    if data.task not in TASKS:
        raise UsageError(f"--task {data.task!r}: must be one of {', '.join(TASKS)}")
    for name in ("max_seq_length", "max_target_length", "max_train_samples", "max_eval_samples",
                 "max_predict_samples"):
        value = getattr(data, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name} must be a positive integer, got {value}")
    for name in ("train_file", "validation_file", "test_file"):
        path = getattr(data, name)
        if path is None:
            continue
        if not Path(path).is_file():
            raise UsageError(f"--{name} {path}: no such file")
        if Path(path).suffix.lower() not in DATA_EXTENSIONS:
            raise UsageError(f"--{name} {path}: the extension must be one of {', '.join(DATA_EXTENSIONS)}")
    if data.dataset_name is None and data.train_file is None and data.validation_file is None \
            and data.test_file is None:
        raise UsageError("no data: pass --train_file (and --validation_file / --test_file) or --dataset_name")
    if data.dataset_name is not None and any((data.train_file, data.validation_file, data.test_file)):
        raise UsageError("--dataset_name and --train_file / --validation_file / --test_file exclude each other")
    if (data.prompt_column is None) != (data.completion_column is None):
        raise UsageError("--prompt_column and --completion_column go together")
    if data.prompt_column is not None and data.task != "causal-lm":
        raise UsageError(f"--prompt_column / --completion_column are for --task causal-lm, not {data.task}")
    if not (training.do_train or training.do_eval or training.do_predict):  # nothing asked: do what the data allows
        training.do_train = data.train_file is not None or data.dataset_name is not None
        training.do_eval = data.validation_file is not None or data.dataset_name is not None
        training.do_predict = data.test_file is not None
    if training.do_train and data.train_file is None and data.dataset_name is None:
        raise UsageError("--do_train needs --train_file or --dataset_name")


def adapter_config(spec: Optional[str], task_type: str):
    """Our config from a preset name, a JSON file, or the default."""
    import peft_bottleneck as pb

    if spec is None:
        return pb.BottleneckConfig(task_type=task_type)
    if spec in pb.PRESET_NAMES:
        return pb.get_config(spec, task_type=task_type)
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"--adapter_config {spec!r}: neither an AdapterHub preset ({', '.join(pb.PRESET_NAMES)}) "
                         "nor a JSON file")
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UsageError(f"--adapter_config {spec}: not a readable JSON file ({error})") from None
    if not isinstance(settings, dict):
        raise UsageError(f"--adapter_config {spec}: must hold a JSON object")
    try:
        if "peft_type" in settings:
            from peft import PeftConfig

            settings = {k: v for k, v in settings.items() if k not in ("base_model_name_or_path", "revision")}
            config = PeftConfig.from_peft_type(**{**settings, "inference_mode": False})
            if not isinstance(config, pb.AdapterConfigBase):
                raise ValueError(f"peft_type {settings['peft_type']!r} is not an adapter kind of peft-bottleneck")
            config.task_type = task_type
            return config
        return pb.presets.from_adapterhub_settings(settings, task_type=task_type)
    except (ValueError, TypeError, KeyError) as error:
        raise UsageError(f"--adapter_config {spec}: {error}") from None


# ---- data ----

def load_splits(data: DataArguments):
    import datasets

    datasets.disable_progress_bars()  # reading is quick; a bad file must end in one line, not a progress bar
    try:
        if data.dataset_name is not None:
            loaded = datasets.load_dataset(data.dataset_name, data.dataset_config_name)
        else:
            files = {split: getattr(data, f"{split}_file") for split in ("train", "validation", "test")}
            loaded = datasets.DatasetDict({
                split: datasets.load_dataset(DATA_EXTENSIONS[Path(path).suffix.lower()], data_files=path,
                                             split="train")
                for split, path in files.items() if path is not None})
    except Exception as error:  # noqa: BLE001  (whatever the reader raises, the user needs its one line)
        source = f"--dataset_name {data.dataset_name}" if data.dataset_name else "the data files"
        raise UsageError(f"could not read {source}: {str(error).strip().splitlines()[0] if str(error) else error!r}") \
            from None
    finally:
        datasets.enable_progress_bars()
    if not isinstance(loaded, datasets.DatasetDict):
        loaded = datasets.DatasetDict({"train": loaded})
    splits = datasets.DatasetDict({name: split for name, split in loaded.items()
                                   if name in ("train", "validation", "test")})
    if "validation" not in splits and "dev" in loaded:
        splits["validation"] = loaded["dev"]
    for name, limit in (("train", data.max_train_samples), ("validation", data.max_eval_samples),
                        ("test", data.max_predict_samples)):
        if name in splits and limit is not None and len(splits[name]) > limit:
            splits[name] = splits[name].select(range(limit))
    return splits


def needed_columns(data: DataArguments) -> dict[str, str]:
    """{argument: column} the task reads."""
    if data.task == "sequence-classification":
        columns = {"text_column": data.text_column, "label_column": data.label_column}
        if data.text_pair_column:
            columns["text_pair_column"] = data.text_pair_column
        return columns
    if data.task == "causal-lm":
        if data.prompt_column:
            return {"prompt_column": data.prompt_column, "completion_column": data.completion_column}
        return {"text_column": data.text_column}
    return {"text_column": data.text_column, "target_column": data.target_column}


def check_columns(splits, data: DataArguments) -> None:
    for split_name, split in splits.items():
        labels_optional = split_name == "test" and data.task == "sequence-classification"
        for argument, column in needed_columns(data).items():
            if column not in split.column_names and not (labels_optional and argument == "label_column"):
                raise UsageError(f"--{argument} {column!r}: not a column of the {split_name} data (columns: "
                                 f"{', '.join(split.column_names)})")
            if column in split.column_names and None in split[column]:
                row = split[column].index(None)
                raise UsageError(f"--{argument} {column!r}: row {row} of the {split_name} data is empty")


def label_names(splits, column: str) -> list:
    """The classes, sorted: strings, or integers that need not start at 0 (a ClassLabel keeps its own names)."""
    import datasets

    first = next(iter(splits.values()))
    feature = first.features.get(column)
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    values = set()
    for split in splits.values():
        if column in split.column_names:
            values.update(split[column])
    if all(isinstance(v, bool) or isinstance(v, int) or (isinstance(v, float) and v.is_integer()) for v in values):
        return sorted({int(v) for v in values})
    if all(isinstance(v, str) for v in values):
        return sorted(values)
    odd = next(v for v in values if not isinstance(v, (str, int, bool)))
    raise UsageError(f"--label_column {column!r}: class labels must be strings or integers, found {odd!r} "
                     "(regression is not supported)")


def tokenize(splits, data: DataArguments, tokenizer, classes: Optional[list]):
    task = data.task

    index = {str(c): i for i, c in enumerate(classes or [])}

    def class_id(value, already_ids: bool) -> int:
        if already_ids:  # a datasets ClassLabel column holds ids already
            return int(value)
        return index[str(int(value) if isinstance(value, float) else value)]

    def classification(batch, already_ids=False):
        pairs = batch[data.text_pair_column] if data.text_pair_column else None
        encoded = tokenizer(batch[data.text_column], pairs, truncation=True, max_length=data.max_seq_length)
        if data.label_column in batch:
            encoded["labels"] = [class_id(v, already_ids) for v in batch[data.label_column]]
        return encoded

    def language_model(batch):
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        if data.prompt_column:
            prompts = tokenizer(batch[data.prompt_column])["input_ids"]
            completions = tokenizer(batch[data.completion_column], add_special_tokens=False)["input_ids"]
            ids = [(p + c + eos)[:data.max_seq_length] for p, c in zip(prompts, completions)]
            labels = [([IGNORE_INDEX] * len(p) + c + eos)[:data.max_seq_length] for p, c in zip(prompts, completions)]
        else:
            ids = [(t + eos)[:data.max_seq_length] for t in tokenizer(batch[data.text_column])["input_ids"]]
            labels = [list(t) for t in ids]
        return {"input_ids": ids, "attention_mask": [[1] * len(t) for t in ids], "labels": labels}

    def sequence_to_sequence(batch):
        encoded = tokenizer(batch[data.text_column], truncation=True, max_length=data.max_seq_length)
        encoded["labels"] = tokenizer(text_target=batch[data.target_column], truncation=True,
                                      max_length=data.max_target_length)["input_ids"]
        return encoded

    function = {"sequence-classification": classification, "causal-lm": language_model,
                "seq2seq": sequence_to_sequence}[task]
    import datasets

    encoded = datasets.DatasetDict()
    for name, split in splits.items():  # each split its own columns (a test file may have no labels)
        ids = isinstance(split.features.get(data.label_column), datasets.ClassLabel)
        encoded[name] = split.map(function, batched=True, remove_columns=split.column_names, desc="Tokenizing",
                                  fn_kwargs={"already_ids": ids} if task == "sequence-classification" else None)
    return encoded


# ---- model ----

def resolve_model(model_args: ModelArguments):
    """The model's config, or a one-line error: a folder, or a Hub id (from the local cache when offline)."""
    from transformers import AutoConfig

    name = model_args.model_name_or_path
    try:
        return AutoConfig.from_pretrained(name, revision=model_args.revision,
                                          trust_remote_code=model_args.trust_remote_code)
    except (OSError, ValueError) as error:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        where = "in the local Hugging Face cache (offline)" if offline else "on the Hub or in the local cache"
        if Path(name).is_dir():
            raise UsageError(f"--model_name_or_path {name}: a folder without a readable model config ({error})") \
                from None
        raise UsageError(f"--model_name_or_path {name}: neither a local folder nor a model {where}") from None


def load_model(model_args: ModelArguments, data: DataArguments, config, classes: Optional[list], tokenizer):
    import transformers as tf

    auto = {"sequence-classification": tf.AutoModelForSequenceClassification,
            "causal-lm": tf.AutoModelForCausalLM, "seq2seq": tf.AutoModelForSeq2SeqLM}[data.task]
    kwargs = dict(revision=model_args.revision, trust_remote_code=model_args.trust_remote_code)
    if classes is not None:
        id2label = {i: str(c) for i, c in enumerate(classes)}
        kwargs.update(num_labels=len(classes), id2label=id2label, label2id={v: k for k, v in id2label.items()},
                      ignore_mismatched_sizes=True)  # a head trained for other labels is replaced by a new one
    try:
        model = auto.from_pretrained(model_args.model_name_or_path, **kwargs)
    except ValueError as error:  # e.g. a model with no head of that kind ("Unrecognized configuration class")
        raise UsageError(f"--task {data.task}: {model_args.model_name_or_path} ({config.model_type}) has no such "
                         f"head: {str(error).splitlines()[0]}") from None
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def compute_metrics_for(task: str):
    import numpy as np

    if task != "sequence-classification":
        return None
    from .metrics import load_classification_metric

    metric = load_classification_metric()

    def compute(prediction):
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        return metric.compute(predictions=np.argmax(logits, axis=-1), references=prediction.label_ids)

    return compute


def with_perplexity(metrics: dict, prefix: str) -> dict:
    loss = metrics.get(f"{prefix}_loss")
    if loss is not None:
        metrics[f"{prefix}_perplexity"] = math.exp(loss) if loss < 50 else float("inf")
    return metrics


# ---- the run ----

def run(argv: list[str]) -> dict:
    model_args, data, training_args, given = parse(argv)
    check_arguments(model_args, data, training_args)
    task_type = TASK_TYPES[data.task]
    peft_config = adapter_config(model_args.adapter_config, task_type)  # before anything heavy is loaded
    model_config = resolve_model(model_args)
    splits = load_splits(data)
    if training_args.do_train and "train" not in splits:
        raise UsageError(f"--dataset_name {data.dataset_name}: no train split (splits: {', '.join(splits)})")
    check_columns(splits, data)
    classes = label_names(splits, data.label_column) if data.task == "sequence-classification" else None

    import transformers as tf
    from peft import get_peft_model

    from .learning_rates import create_adapter_optimizer
    from .model_card import TrainingRecord, write_model_card
    from .training import last_complete_checkpoint

    tokenizer = tf.AutoTokenizer.from_pretrained(model_args.model_name_or_path, revision=model_args.revision,
                                                 trust_remote_code=model_args.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = load_model(model_args, data, model_config, classes, tokenizer)
    try:
        model = get_peft_model(model, peft_config, adapter_name=model_args.adapter_name)
    except ValueError as error:
        raise UsageError(f"--adapter_config: {error}") from None
    model.print_trainable_parameters()
    encoded = tokenize(splits, data, tokenizer, classes)

    collator = (tf.DataCollatorWithPadding(tokenizer) if data.task == "sequence-classification"
                else tf.DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=IGNORE_INDEX))
    engine_builds_optimizer = bool(training_args.deepspeed)
    optimizer = None
    if not engine_builds_optimizer:  # the kinds' recommended rates unless --learning_rate was given
        rate = training_args.learning_rate if "learning_rate" in given else None
        optimizer = create_adapter_optimizer(model, lr=rate, weight_decay=training_args.weight_decay)
    trainer = tf.Trainer(model=model, args=training_args, data_collator=collator,
                         train_dataset=encoded.get("train") if training_args.do_train else None,
                         eval_dataset=encoded.get("validation"), compute_metrics=compute_metrics_for(data.task),
                         optimizers=(optimizer, None), processing_class=tokenizer)
    results: dict = {}
    if training_args.do_train:
        resume = training_args.resume_from_checkpoint
        if resume is None and Path(training_args.output_dir).is_dir():
            resume = last_complete_checkpoint(training_args.output_dir)  # a killed run picks up where it was
            if resume is not None:
                print(f"resuming from {resume} (a new --output_dir starts over)")
        outcome = trainer.train(resume_from_checkpoint=resume)
        trainer.save_model()
        trainer.log_metrics("train", outcome.metrics)
        trainer.save_metrics("train", outcome.metrics)
        results.update(outcome.metrics)
    for split, prefix, wanted in (("validation", "eval", training_args.do_eval), ("test", "test",
                                                                                 training_args.do_predict)):
        if wanted and split == "test" and split in encoded and "labels" not in encoded[split].column_names \
                and classes is not None:
            write_predictions(trainer, encoded[split], splits[split], data, classes, training_args.output_dir)
        if wanted and split in encoded and "labels" in encoded[split].column_names:
            metrics = trainer.evaluate(encoded[split], metric_key_prefix=prefix)
            if data.task != "sequence-classification":
                metrics = with_perplexity(metrics, prefix)
            trainer.log_metrics(prefix, metrics)
            trainer.save_metrics(prefix, metrics)
            results.update(metrics)
    output = Path(training_args.output_dir)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(output)
        if classes is not None:
            (output / "id2label.json").write_text(json.dumps({i: str(c) for i, c in enumerate(classes)}, indent=2))
        if training_args.do_train:
            record = TrainingRecord(
                data=[f"{split}: {describe_source(data, split)} ({len(splits[split]):,} rows)" for split in splits],
                metrics={k: v for k, v in results.items() if k.endswith(CARD_METRICS)},
                command=f"{PROG} {shlex.join(portable(argv))}", labels=[str(c) for c in classes] if classes else None)
            write_model_card(output, model, record)
    return results


def write_predictions(trainer, encoded, raw, data: DataArguments, classes: list, output_dir) -> None:
    """Unlabelled test data: ``predictions.csv`` with each row's text and predicted label."""
    import numpy as np

    logits = trainer.predict(encoded).predictions
    logits = logits[0] if isinstance(logits, tuple) else logits
    predicted = [str(classes[i]) for i in np.argmax(logits, axis=-1)]
    if trainer.is_world_process_zero():
        raw.add_column("prediction", predicted).select_columns(
            [c for c in (data.text_column, data.text_pair_column, "prediction") if c]).to_csv(
            str(Path(output_dir) / "predictions.csv"), index=False)


CARD_METRICS = ("_loss", "_accuracy", "_macro_f1", "_perplexity", "_runtime", "epoch")


def portable(argv: list[str]) -> list[str]:
    """The command as the card records it: a path on this machine by its last part only."""
    return [Path(a).name if os.path.isabs(a) and os.path.exists(a) else a for a in argv]


def describe_source(data: DataArguments, split: str) -> str:
    if data.dataset_name:
        return f"data set `{data.dataset_name}`" + (f" ({data.dataset_config_name})" if data.dataset_config_name
                                                    else "") + f", split `{split}`"
    return f"`{Path(getattr(data, f'{split}_file')).name}`"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        run(argv)
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
