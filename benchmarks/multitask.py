"""One MiniLM backbone, one task-routed controller trained on mixed batches of two real tasks, against separate
single-task adapters.

    python benchmarks/multitask.py                 # 3 seeds; Houlsby routes (masked and joint losses), hypernetwork
    python benchmarks/multitask.py --seeds 0 --losses masked --train-per-task 200 --epochs 1   # smoke run

Tasks: Rotten Tomatoes sentiment (2 classes) and BBC News topics (5 classes). The controller model has one
7-way head (labels 0-1 sentiment, 2-6 topics) and one Houlsby adapter per task in every layer; each batch mixes
both tasks and the `task` column routes every example to its adapter. A prediction is the argmax over its task's
labels. Loss ``masked`` (``TaskMaskedLoss``): each example's softmax covers its own task's labels only;
``joint``: one softmax over all 7 (each task's examples push the other task's classes down). The baselines train
one Houlsby adapter and head per task. ``--controller-adapters`` picks the controller's kind: ``houlsby`` (one
adapter route per task) and ``hyper`` (hyperformer: one shared hypernetwork generates every layer's adapter from a
task embedding; masked loss only). Same rate, epochs, batch size and training examples for all. Accuracy on each
task's held-out test split, per seed and as the mean over seeds; trainable parameters in all and the cost of one
more task (``add_task`` after training: the trainable parameters it adds).
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from datasets import concatenate_datasets  # noqa: E402
from peft import get_peft_model  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from peft_bottleneck import (  # noqa: E402
    AdapterControllerConfig,
    BottleneckConfig,
    HyperAdapterConfig,
    TaskCollator,
    TaskMaskedLoss,
)
from peft_bottleneck.bundled import minilm_path, sentiment_splits, topic_splits  # noqa: E402

CONTROLLER_ADAPTERS = {"houlsby": BottleneckConfig, "hyper": HyperAdapterConfig}
TASKS = {"sentiment": (sentiment_splits, 0, 2), "topic": (topic_splits, 2, 5)}  # loader, label offset, classes


def load(tokenizer, args, seed):
    data = {}
    for task, (loader, offset, _) in TASKS.items():
        splits = loader()
        splits["train"] = splits["train"].shuffle(seed=seed).select(
            range(min(args.train_per_task, len(splits["train"]))))
        data[task] = splits.map(
            lambda b: {**tokenizer(b["text"], truncation=True, max_length=args.max_length), "task": [task] * len(b["text"])},
            batched=True, remove_columns=["text"])
        data[task] = data[task].map(lambda b: {"joint_label": [label + offset for label in b["label"]]}, batched=True)
    return data


def arguments(args, name, seed, **kw):
    return TrainingArguments(output_dir=os.path.join(args.output_dir, name), per_device_train_batch_size=32,
                             per_device_eval_batch_size=128, learning_rate=args.learning_rate,
                             num_train_epochs=args.epochs, warmup_steps=0.1, save_strategy="no", report_to=[],
                             seed=seed, logging_steps=50, max_grad_norm=args.max_grad_norm, disable_tqdm=True, **kw)


def accuracy(logits, labels):
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def run_controller(args, tokenizer, data, seed, loss, adapter="houlsby"):
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=7)
    model = get_peft_model(model, AdapterControllerConfig(tasks=list(TASKS), adapter=CONTROLLER_ADAPTERS[adapter](),
                                                          task_type="SEQ_CLS"))
    train = concatenate_datasets([d["train"] for d in data.values()]).shuffle(seed=seed)
    train = train.remove_columns("label").rename_column("joint_label", "labels")
    collator = TaskCollator(list(TASKS), DataCollatorWithPadding(tokenizer))
    masked = TaskMaskedLoss({task: classes for task, (_, _, classes) in TASKS.items()}) if loss == "masked" else None
    trainer = Trainer(model=model, args=arguments(args, "controller", seed, remove_unused_columns=False),
                      train_dataset=train, data_collator=collator, compute_loss_func=masked)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    results = {}
    for task, (_, offset, classes) in TASKS.items():
        test = data[task]["test"].remove_columns("joint_label").rename_column("label", "labels")
        logits = trainer.predict(test).predictions[:, offset : offset + classes]  # the task's own labels
        results[task] = accuracy(logits, np.array(test["labels"]))
    total = trainable(model)
    model.base_model.add_task("one_more")
    return {"accuracy": results, "seconds": seconds, "trainable": total, "per_added_task": trainable(model) - total}


def run_single(args, tokenizer, data, task, seed):
    torch.manual_seed(seed)
    _, _, classes = TASKS[task]
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=classes)
    model = get_peft_model(model, BottleneckConfig(task_type="SEQ_CLS"))
    columns = ["task", "joint_label"]
    train = data[task]["train"].remove_columns(columns).rename_column("label", "labels")
    test = data[task]["test"].remove_columns(columns).rename_column("label", "labels")
    trainer = Trainer(model=model, args=arguments(args, task, seed), train_dataset=train,
                      data_collator=DataCollatorWithPadding(tokenizer))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {"accuracy": accuracy(trainer.predict(test).predictions, np.array(test["labels"])), "seconds": seconds,
            "trainable": trainable(model)}


def controller_variants(args) -> list:
    """(adapter, loss) pairs: every loss for Houlsby routes, the masked loss for the other kinds."""
    return [(a, loss) for a in args.controller_adapters for loss in args.losses if a == "houlsby" or loss == "masked"]


def mean(values) -> float:
    return float(np.mean(list(values)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-per-task", type=int, default=1000)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--losses", nargs="+", choices=["masked", "joint"], default=["masked", "joint"])
    parser.add_argument("--controller-adapters", nargs="+", choices=sorted(CONTROLLER_ADAPTERS),
                        default=["houlsby", "hyper"])
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--skip-single", action="store_true", help="train only the controller")
    parser.add_argument("--output-dir", default="outputs/multitask")
    parser.add_argument("--output", default=None, help="write the figures as JSON")
    args = parser.parse_args(argv)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    runs = []
    for seed in args.seeds:
        data = load(tokenizer, args, seed)
        run = {"seed": seed, "controller": {f"{adapter}, {loss} loss": run_controller(args, tokenizer, data, seed,
                                                                                     loss, adapter)
                                            for adapter, loss in controller_variants(args)}}
        if not args.skip_single:
            run["single"] = {task: run_single(args, tokenizer, data, task, seed) for task in TASKS}
        runs.append(run)
        print(f"seed {seed}: " + json.dumps({k: v for k, v in run.items() if k != "seed"}, default=str), flush=True)

    print(f"\nMiniLM-L6, {args.train_per_task} training examples per task, {args.epochs:g} epochs, lr "
          f"{args.learning_rate}, seeds {args.seeds}; test accuracy, mean over seeds (per seed in brackets)")
    variants = [f"{adapter}, {loss} loss" for adapter, loss in controller_variants(args)]
    columns = [f"controller ({v})" for v in variants] + ([] if args.skip_single else ["single-task"])
    print("| task | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for task in TASKS:
        cells = [[r["controller"][v]["accuracy"][task] for r in runs] for v in variants]
        if not args.skip_single:
            cells.append([r["single"][task]["accuracy"] for r in runs])
        print(f"| {task} | " + " | ".join(f"{mean(c):.4f} ({', '.join(f'{v:.3f}' for v in c)})" for c in cells)
              + " |")
    sizes = [f"{runs[0]['controller'][v]['trainable']:,} / {runs[0]['controller'][v]['per_added_task']:,}"
             for v in variants]
    if not args.skip_single:
        sizes.append(f"{sum(runs[0]['single'][t]['trainable'] for t in TASKS):,} / "
                     f"{runs[0]['single']['sentiment']['trainable']:,}")
    print("| trainable in all / per added task | " + " | ".join(sizes) + " |")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"args": vars(args), "runs": runs}, f, indent=2)


if __name__ == "__main__":
    main()
