"""The main job: fine-tune a bundled encoder with an adapter on bundled data, evaluate, save, reload, compare.

    python -m peft_bottleneck.finetune                      # MiniLM-L6 + Houlsby adapter on Rotten Tomatoes
    python -m peft_bottleneck.finetune --adapter compacter --dataset topic  # BBC News topics, Compacter
    python -m peft_bottleneck.finetune --adapter parallel --model-path ./my-bert --data-csv my.csv

Writes to the output folder: `adapter/` (the trained adapter), `results.json`, `results.md` (the table) and
`results.png` (training loss and validation accuracy per step for the adapter and the head-only baseline, and test
accuracy against the trained share). Nothing else is kept: no Trainer checkpoints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local; never wait on the network

PROG = "python -m peft_bottleneck.finetune"
ADAPTERS = ("houlsby", "pfeiffer", "parallel", "compacter", "compacter++", "low-rank")
DATASETS = ("sentiment", "topic")
DEMO_TRAIN_SAMPLES = 4000  # the bundled demo's budget: 4 min 32 s on 2 cores (2,000 sentences: 0.79 against 0.82)


@dataclass
class RunResult:
    name: str
    accuracy: float
    macro_f1: float
    trainable: int
    total: int
    seconds: float
    learning_rate: float
    history: list = field(default_factory=list)  # (step, training loss) and (step, validation accuracy)
    head_learning_rate: float | None = None  # the new head's own rate beside an adapter


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", choices=ADAPTERS, default="houlsby")
    parser.add_argument("--model-path", default=None, help="local encoder folder (default: bundled MiniLM-L6)")
    parser.add_argument("--dataset", choices=DATASETS, default="sentiment", help="bundled data set")
    parser.add_argument("--data-csv", default=None, help="your own CSV with 'text' and 'label' (replaces --dataset)")
    parser.add_argument("--output-dir", default="outputs/finetune")
    parser.add_argument("--max-train-samples", type=int, default=None,
                        help=f"use the first N training examples (default: {DEMO_TRAIN_SAMPLES:,} of the bundled "
                        "data, so the demo takes minutes; all rows of --data-csv)")
    parser.add_argument("--max-eval-samples", type=int, default=None, help="cap validation and test (smoke runs)")
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="default: the kind's recommended rate (peft_bottleneck.recommended_learning_rate)")
    parser.add_argument("--head-learning-rate", type=float, default=None,
                        help="rate of the new classifier head, beside the adapter and in the head-only baseline "
                        "(default: peft_bottleneck.RECOMMENDED_HEAD_LEARNING_RATE)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--keep-baseline", action="store_true", help="also save the head-only model")
    parser.add_argument("--verbose", action="store_true", help="show the libraries' warnings and loading reports")
    return parser


def check_args(parser: argparse.ArgumentParser, args) -> None:
    """Every argument checked before anything is loaded: a one-line message and exit code 2 (argparse's)."""
    for name in ("max_train_samples", "max_eval_samples", "batch_size", "max_length"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    for name in ("epochs", "learning_rate", "head_learning_rate"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.data_csv is not None:
        path = Path(args.data_csv)
        if not path.is_file():
            parser.error(f"--data-csv {path}: no such file")
        import pandas as pd

        try:
            columns = set(pd.read_csv(path, nrows=5).columns)
        except Exception as error:
            parser.error(f"--data-csv {path}: not a readable CSV ({type(error).__name__}: {error})")
        missing = {"text", "label"} - columns
        if missing:
            parser.error(f"--data-csv {path}: needs the columns 'text' and 'label'; missing {sorted(missing)}")
    if args.model_path is not None:
        folder = Path(args.model_path)
        if not folder.is_dir():
            parser.error(f"--model-path {folder}: no such folder")
        if not (folder / "config.json").is_file() or not any(
                (folder / w).is_file() for w in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")):
            parser.error(f"--model-path {folder}: holds no model (config.json and model.safetensors expected)")
        if not any((folder / t).is_file() for t in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
            parser.error(f"--model-path {folder}: holds no tokenizer (tokenizer.json or vocab.txt expected)")


def quiet(verbose: bool) -> None:
    """No warning a user cannot act on: loading reports for a new head, deprecations inside the libraries."""
    if verbose:
        return
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # "Loading weights" of a local model, three times
    # where DeepSpeed is installed, accelerate imports it and it warns that it found no GPU; this job does not use it
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, message=".*pin_memory.*")
    import datasets

    datasets.disable_progress_bars()


def adapter_config(name: str):
    import peft_bottleneck as pb

    return {
        "houlsby": lambda: pb.BottleneckConfig(task_type="SEQ_CLS"),
        "pfeiffer": lambda: pb.BottleneckConfig(task_type="SEQ_CLS", placement="pfeiffer"),
        "parallel": lambda: pb.ParallelAdapterConfig(task_type="SEQ_CLS"),
        "compacter": lambda: pb.CompacterConfig(task_type="SEQ_CLS"),
        "compacter++": lambda: pb.CompacterConfig(task_type="SEQ_CLS", placement="pfeiffer"),
        "low-rank": lambda: pb.LowRankConfig(task_type="SEQ_CLS"),
    }[name]()


def load_data(args, tokenizer):
    from .bundled import csv_splits, sentiment_splits, topic_splits

    splits = csv_splits(args.data_csv) if args.data_csv else {"sentiment": sentiment_splits,
                                                               "topic": topic_splits}[args.dataset]()
    limit = args.max_train_samples or (None if args.data_csv else DEMO_TRAIN_SAMPLES)
    if limit and len(splits["train"]) > limit:
        print(f"training on the first {limit:,} of {len(splits['train']):,} training examples "
              "(--max-train-samples to change)")
        splits["train"] = splits["train"].select(range(limit))
    for name in ("validation", "test"):
        if args.max_eval_samples and len(splits[name]) > args.max_eval_samples:
            splits[name] = splits[name].select(range(args.max_eval_samples))
    num_labels = len(set(splits["train"]["label"]))
    tokenized = splits.map(lambda batch: tokenizer(batch["text"], truncation=True, max_length=args.max_length),
                           batched=True, remove_columns=["text"])
    return tokenized, num_labels


def train(name, model, args, data, tokenizer, learning_rate, scratch, optimizer=None, collator=None) -> RunResult:
    import numpy as np
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from .metrics import load_classification_metric
    from .model_card import trainable_parameters

    metric = load_classification_metric()
    steps_per_epoch = max(1, len(data["train"]) // args.batch_size)
    training_args = TrainingArguments(
        output_dir=str(scratch / name), per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=32,
        learning_rate=learning_rate, num_train_epochs=args.epochs, warmup_steps=0.1, eval_strategy="steps",
        # batches of sentences of similar length: about half the padding of random batches of short sentences
        train_sampling_strategy="group_by_length" if collator is None else "random",
        eval_steps=steps_per_epoch, save_strategy="no", logging_steps=max(1, steps_per_epoch // 10),
        report_to=[], seed=args.seed, dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(),
        dataloader_pin_memory=torch.cuda.is_available(), disable_tqdm=not sys.stderr.isatty(),
    )
    trainer = Trainer(
        model=model, args=training_args, train_dataset=data["train"], eval_dataset=data["validation"],
        data_collator=collator or DataCollatorWithPadding(tokenizer), optimizers=(optimizer, None),
        compute_metrics=lambda p: metric.compute(predictions=np.argmax(p.predictions, axis=-1),
                                                 references=p.label_ids),
    )
    head_rates = [g["lr"] for g in optimizer.param_groups if g.get("name") == "head"] if optimizer else []
    seconds = trainer.train().metrics["train_runtime"]
    test = trainer.evaluate(data["test"], metric_key_prefix="test")
    history = [{"step": e["step"], **{k: e[k] for k in ("loss", "eval_accuracy") if k in e}}
               for e in trainer.state.log_history if "loss" in e or "eval_accuracy" in e]
    trainable, total = trainable_parameters(model)  # PEFT's own count for a PeftModel
    result = RunResult(name, test["test_accuracy"], test["test_macro_f1"], trainable, total, seconds, learning_rate,
                       history, head_rates[0] if head_rates else None)
    return trainer, result


def head_only_model(model_path, num_labels):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=num_labels)
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith("classifier")
    return model


def classifier_inputs(model, dataset, tokenizer, batch_size: int = 32):
    """What reaches `model.classifier` for every row of `dataset`, in order, from one pass in eval mode; None when
    the model has no `classifier` or it does not take one vector per example (RoBERTa's head reads the sequence)."""
    import numpy as np
    import torch
    from transformers import DataCollatorWithPadding

    if not isinstance(getattr(model, "classifier", None), torch.nn.Module):
        return None
    rows = dataset.remove_columns("label")
    by_length = np.argsort([len(ids) for ids in rows["input_ids"]], kind="stable")  # little padding per batch
    collate = DataCollatorWithPadding(tokenizer)
    captured = []
    hook = model.classifier.register_forward_pre_hook(lambda module, inputs: captured.append(inputs[0]))
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(rows), batch_size):
                model(**collate(rows[by_length[start:start + batch_size].tolist()]))
                if captured[-1].dim() != 2:
                    return None
    finally:
        hook.remove()
    inputs = np.empty((len(rows), captured[0].shape[-1]), dtype=np.float32)
    inputs[by_length] = torch.cat(captured).float().numpy()
    return inputs


def feature_head(classifier):
    """The module the head-only baseline trains: the model's own classifier (shared, so training this trains the
    head-only model) on precomputed inputs."""
    import torch
    from transformers.modeling_outputs import SequenceClassifierOutput

    class FeatureHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.classifier = classifier

        def forward(self, features, labels=None):
            logits = self.classifier(features)
            loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
            return SequenceClassifierOutput(loss=loss, logits=logits)

    return FeatureHead()


def train_head_only(model_path, num_labels, args, data, tokenizer, learning_rate, scratch):
    """The head-only baseline: the frozen encoder runs once over every split and the new classifier trains on what
    reaches it (a linear probe), with the same Trainer settings as the adapter. The encoder's dropout is off in that
    one pass, so the baseline sees clean features. Models whose head reads more than one vector per example train
    the head through the frozen encoder every step instead."""
    import datasets
    from transformers import default_data_collator

    from .model_card import trainable_parameters

    model = head_only_model(model_path, num_labels)
    started = time.perf_counter()
    features = {}
    for split in ("train", "validation", "test"):
        inputs = classifier_inputs(model, data[split], tokenizer)
        if inputs is None:
            return model, *train("head-only", model, args, data, tokenizer, learning_rate, scratch)
        features[split] = datasets.Dataset.from_dict({"features": inputs, "labels": data[split]["label"]})
    probe = feature_head(model.classifier)
    trainer, result = train("head-only", probe, args, datasets.DatasetDict(features), tokenizer, learning_rate,
                            scratch, collator=default_data_collator)
    result.trainable, result.total = trainable_parameters(model)
    result.seconds = time.perf_counter() - started  # the encoder's pass included: the baseline's whole cost
    return model, trainer, result


RELOAD_CHECK_ROWS = 256


def check_reload(trainer, output_dir: Path, model_path, num_labels, data) -> Path:
    """Save the adapter, load it onto a fresh base model and check the predictions are the same."""
    import numpy as np
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    adapter_dir = output_dir / "adapter"
    trainer.model.save_pretrained(adapter_dir)
    fresh = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=num_labels)
    reloaded = PeftModel.from_pretrained(fresh, adapter_dir)
    sample = data["test"].select(range(min(RELOAD_CHECK_ROWS, len(data["test"]))))
    original = trainer.predict(sample).predictions
    trainer.model = reloaded
    again = trainer.predict(sample).predictions
    if not np.allclose(original, again, atol=1e-5):
        raise RuntimeError("the reloaded adapter does not reproduce the trained model's predictions")
    size = (adapter_dir / "adapter_model.safetensors").stat().st_size / 1e6
    print(f"saved {adapter_dir} (adapter weights {size:.2f} MB) and reloaded it: predictions identical")
    return adapter_dir


def report(result: RunResult) -> None:
    print(f"{result.name}: test accuracy {result.accuracy:.4f}, macro-F1 {result.macro_f1:.4f}, {result.seconds:.0f} s")


def table(results: list[RunResult]) -> str:
    lines = ["| method | learning rate | test accuracy | test macro-F1 | trained params | share | train time (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        rate = f"{r.learning_rate:g}" + (f" (head {r.head_learning_rate:g})" if r.head_learning_rate else "")
        lines.append(f"| {r.name} | {rate} | {r.accuracy:.4f} | {r.macro_f1:.4f} | {r.trainable:,} | "
                     f"{100 * r.trainable / r.total:.2f}% | {r.seconds:.0f} |")
    return "\n".join(lines)


def plot(results: list[RunResult], path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: the caller's backend and figures are left alone

    fig = Figure(figsize=(14, 4))
    loss_ax, acc_ax, bar_ax = fig.subplots(1, 3)
    for r in results:
        losses = [(e["step"], e["loss"]) for e in r.history if "loss" in e]
        accuracies = [(e["step"], e["eval_accuracy"]) for e in r.history if "eval_accuracy" in e]
        if losses:
            loss_ax.plot(*zip(*losses), label=r.name)
        if accuracies:
            acc_ax.plot(*zip(*accuracies), marker="o", label=r.name)
    loss_ax.set(title="training loss", xlabel="step")
    acc_ax.set(title="validation accuracy", xlabel="step")
    shares = [100 * r.trainable / r.total for r in results]
    bar_ax.bar([r.name for r in results], [r.accuracy for r in results])
    for x, (r, share) in enumerate(zip(results, shares)):
        bar_ax.text(x, r.accuracy, f"{share:.2f}% trained", ha="center", va="bottom", fontsize=8)
    bar_ax.set(title="test accuracy (label: trained share)", ylim=(0, 1))
    loss_ax.legend()
    acc_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None, parser=None) -> list[RunResult]:
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    quiet(args.verbose)

    import tempfile

    import torch
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .bundled import minilm_path
    from .learning_rates import RECOMMENDED_HEAD_LEARNING_RATE, create_adapter_optimizer, recommended_learning_rate

    torch.manual_seed(args.seed)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model_path = args.model_path or str(minilm_path())
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    data, num_labels = load_data(args, tokenizer)
    print(f"data: {', '.join(f'{k} {len(v)}' for k, v in data.items())}; model: {model_path}")
    config = adapter_config(args.adapter)
    learning_rate = args.learning_rate or recommended_learning_rate(config)  # documented per kind, no search
    head_learning_rate = args.head_learning_rate or RECOMMENDED_HEAD_LEARNING_RATE

    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".scratch-") as scratch:
        base = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=num_labels)
        model = get_peft_model(base, config)
        optimizer = create_adapter_optimizer(model, lr=learning_rate, head_lr=head_learning_rate, weight_decay=0.0)
        trainer, adapter_result = train(args.adapter, model, args, data, tokenizer, learning_rate, Path(scratch),
                                        optimizer)
        report(adapter_result)
        check_reload(trainer, output_dir, model_path, num_labels, data)
        results = [adapter_result]
        if not args.skip_baseline:
            head, _, head_result = train_head_only(model_path, num_labels, args, data, tokenizer, head_learning_rate,
                                                   Path(scratch))
            report(head_result)
            results.append(head_result)
            if args.keep_baseline:
                head.save_pretrained(output_dir / "head-only")

    (output_dir / "results.json").write_text(json.dumps(
        {"settings": {k: v for k, v in vars(args).items()}, "runs": [asdict(r) for r in results]}, indent=1))
    (output_dir / "results.md").write_text(table(results) + "\n")
    plot(results, output_dir / "results.png")
    print("\n" + table(results))
    print(f"\nwrote {output_dir / 'results.json'}, {output_dir / 'results.md'}, {output_dir / 'results.png'} and "
          f"{output_dir / 'adapter'}")
    return results


if __name__ == "__main__":
    main()
