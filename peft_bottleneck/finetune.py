"""The main job: fine-tune a bundled encoder with an adapter on bundled sentiment data, then save, reload and compare.

    python -m peft_bottleneck.finetune                      # MiniLM-L6 + Houlsby adapter on Rotten Tomatoes
    python -m peft_bottleneck.finetune --adapter compacter --dataset topic  # BBC News topics, Compacter
    python -m peft_bottleneck.finetune --adapter parallel --model-path ./my-bert --data-csv my.csv

Prints the test accuracy and macro-F1 of the adapter next to a head-only baseline (encoder frozen, classifier
trained), the share of trained parameters, and the wall time of each.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local; never wait on the network

import numpy as np  # noqa: E402
import torch  # noqa: E402
from peft import PeftModel, get_peft_model  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

import peft_bottleneck  # noqa: E402
from peft_bottleneck.bundled import csv_splits, minilm_path, sentiment_splits, topic_splits  # noqa: E402
from peft_bottleneck.metrics import load_classification_metric  # noqa: E402

ADAPTERS = {
    "houlsby": lambda: peft_bottleneck.BottleneckConfig(task_type="SEQ_CLS"),
    "pfeiffer": lambda: peft_bottleneck.BottleneckConfig(task_type="SEQ_CLS", placement="pfeiffer"),
    "parallel": lambda: peft_bottleneck.ParallelAdapterConfig(task_type="SEQ_CLS"),
    "compacter": lambda: peft_bottleneck.CompacterConfig(task_type="SEQ_CLS"),
    "compacter++": lambda: peft_bottleneck.CompacterConfig(task_type="SEQ_CLS", placement="pfeiffer"),
}
DATASETS = {"sentiment": sentiment_splits, "topic": topic_splits}


@dataclass
class RunResult:
    name: str
    accuracy: float
    macro_f1: float
    trainable: int
    total: int
    seconds: float


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", choices=sorted(ADAPTERS), default="houlsby")
    parser.add_argument("--model-path", default=None, help="local encoder folder (default: bundled MiniLM-L6)")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="sentiment", help="bundled data set")
    parser.add_argument("--data-csv", default=None, help="your own CSV with 'text' and 'label' (replaces --dataset)")
    parser.add_argument("--output-dir", default="outputs/finetune")
    parser.add_argument("--max-train-samples", type=int, default=4000)
    parser.add_argument("--max-eval-samples", type=int, default=None, help="cap validation and test (smoke runs)")
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--head-learning-rate", type=float, default=1e-2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-baseline", action="store_true")
    return parser.parse_args(argv)


def load_data(args, tokenizer):
    splits = csv_splits(args.data_csv) if args.data_csv else DATASETS[args.dataset]()
    if args.max_train_samples and len(splits["train"]) > args.max_train_samples:
        splits["train"] = splits["train"].select(range(args.max_train_samples))
    for name in ("validation", "test"):
        if args.max_eval_samples and len(splits[name]) > args.max_eval_samples:
            splits[name] = splits[name].select(range(args.max_eval_samples))
    num_labels = len(set(splits["train"]["label"]))
    tokenized = splits.map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=args.max_length),
        batched=True,
        remove_columns=["text"],
    )
    return tokenized, num_labels


def compute_metrics_fn():
    metric = load_classification_metric()

    def compute_metrics(prediction):
        return metric.compute(predictions=np.argmax(prediction.predictions, axis=-1), references=prediction.label_ids)

    return compute_metrics


def train(name, model, args, data, tokenizer, learning_rate) -> tuple[Trainer, RunResult]:
    training_args = TrainingArguments(
        output_dir=os.path.join(args.output_dir, name),
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=128,
        learning_rate=learning_rate,
        num_train_epochs=args.epochs,
        warmup_steps=0.1,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        logging_steps=25,
        report_to=[],
        seed=args.seed,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics_fn(),
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    test = trainer.evaluate(data["test"], metric_key_prefix="test")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainer, RunResult(name, test["test_accuracy"], test["test_macro_f1"], trainable, total, seconds)


def head_only_model(model_path, num_labels):
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=num_labels)
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith("classifier")
    return model


def check_reload(trainer, args, model_path, num_labels, data) -> None:
    """Save the adapter, load it onto a fresh base model and check the predictions are the same."""
    adapter_dir = os.path.join(args.output_dir, "adapter")
    trainer.model.save_pretrained(adapter_dir)
    fresh = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=num_labels)
    reloaded = PeftModel.from_pretrained(fresh, adapter_dir)
    original = trainer.predict(data["test"]).predictions
    trainer.model = reloaded
    again = trainer.predict(data["test"]).predictions
    if not np.allclose(original, again, atol=1e-5):
        raise RuntimeError("the reloaded adapter does not reproduce the trained model's predictions")
    files = sorted(os.listdir(adapter_dir))
    size = os.path.getsize(os.path.join(adapter_dir, "adapter_model.safetensors")) / 1e6
    print(f"\nsaved {adapter_dir} ({', '.join(files)}; adapter weights {size:.2f} MB) and reloaded it: "
          "predictions identical")


def print_table(results: list[RunResult]) -> None:
    print("\n| method | test accuracy | test macro-F1 | trained params | share | train time (s) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r.name} | {r.accuracy:.4f} | {r.macro_f1:.4f} | {r.trainable:,} | "
              f"{100 * r.trainable / r.total:.2f}% | {r.seconds:.0f} |")


def main(argv=None) -> list[RunResult]:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    model_path = args.model_path or str(minilm_path())
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    data, num_labels = load_data(args, tokenizer)
    print(f"data: {', '.join(f'{k} {len(v)}' for k, v in data.items())}; model: {model_path}")

    base = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=num_labels)
    model = get_peft_model(base, ADAPTERS[args.adapter]())
    model.print_trainable_parameters()
    trainer, adapter_result = train(args.adapter, model, args, data, tokenizer, args.learning_rate)
    check_reload(trainer, args, model_path, num_labels, data)
    results = [adapter_result]
    if not args.skip_baseline:
        _, head_result = train("head-only", head_only_model(model_path, num_labels), args, data, tokenizer,
                               args.head_learning_rate)
        results.append(head_result)
    print_table(results)
    return results


if __name__ == "__main__":
    main()
