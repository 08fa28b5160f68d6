"""One MiniLM backbone, one task-routed controller trained on mixed batches of two real tasks, against separate
single-task adapters.

    python benchmarks/multitask.py [--train-per-task 2000 --epochs 2 --seed 0]

Tasks: Rotten Tomatoes sentiment (2 classes) and BBC News topics (5 classes). The controller model has one
7-way head (labels 0-1 sentiment, 2-6 topics) and one Houlsby adapter per task in every layer; each batch mixes
both tasks and the `task` column routes every example to its adapter. A prediction is the argmax over its task's
labels. The baselines train one Houlsby adapter and head per task. Same rate, epochs and batch size for all.
Accuracy on each task's held-out test split.
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

from peft_bottleneck import AdapterControllerConfig, BottleneckConfig, TaskCollator  # noqa: E402
from peft_bottleneck.bundled import minilm_path, sentiment_splits, topic_splits  # noqa: E402

TASKS = {"sentiment": (sentiment_splits, 0, 2), "topic": (topic_splits, 2, 5)}  # loader, label offset, classes


def load(tokenizer, args):
    data = {}
    for task, (loader, offset, _) in TASKS.items():
        splits = loader()
        splits["train"] = splits["train"].shuffle(seed=args.seed).select(
            range(min(args.train_per_task, len(splits["train"]))))
        data[task] = splits.map(
            lambda b: {**tokenizer(b["text"], truncation=True, max_length=args.max_length), "task": [task] * len(b["text"])},
            batched=True, remove_columns=["text"])
        data[task] = data[task].map(lambda b: {"joint_label": [label + offset for label in b["label"]]}, batched=True)
    return data


def arguments(args, name, **kw):
    return TrainingArguments(output_dir=os.path.join(args.output_dir, name), per_device_train_batch_size=32,
                             per_device_eval_batch_size=128, learning_rate=args.learning_rate,
                             num_train_epochs=args.epochs, warmup_steps=0.1, save_strategy="no", report_to=[],
                             seed=args.seed, logging_steps=50, max_grad_norm=args.max_grad_norm, **kw)


def accuracy(logits, labels):
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def run_controller(args, tokenizer, data):
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=7)
    model = get_peft_model(model, AdapterControllerConfig(tasks=list(TASKS), adapter=BottleneckConfig(),
                                                          task_type="SEQ_CLS"))
    train = concatenate_datasets([d["train"] for d in data.values()]).shuffle(seed=args.seed)
    train = train.remove_columns("label").rename_column("joint_label", "labels")
    collator = TaskCollator(list(TASKS), DataCollatorWithPadding(tokenizer))
    trainer = Trainer(model=model, args=arguments(args, "controller", remove_unused_columns=False),
                      train_dataset=train, data_collator=collator)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    results = {}
    for task, (_, offset, classes) in TASKS.items():
        test = data[task]["test"].remove_columns("joint_label").rename_column("label", "labels")
        logits = trainer.predict(test).predictions[:, offset : offset + classes]  # the task's own labels
        results[task] = accuracy(logits, np.array(test["labels"]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"accuracy": results, "seconds": seconds, "trainable": trainable}


def run_single(args, tokenizer, data, task):
    _, _, classes = TASKS[task]
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=classes)
    model = get_peft_model(model, BottleneckConfig(task_type="SEQ_CLS"))
    columns = ["task", "joint_label"]
    train = data[task]["train"].remove_columns(columns).rename_column("label", "labels")
    test = data[task]["test"].remove_columns(columns).rename_column("label", "labels")
    trainer = Trainer(model=model, args=arguments(args, task), train_dataset=train,
                      data_collator=DataCollatorWithPadding(tokenizer))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"accuracy": accuracy(trainer.predict(test).predictions, np.array(test["labels"])), "seconds": seconds,
            "trainable": trainable}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-per-task", type=int, default=1600)
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--skip-single", action="store_true", help="train only the controller")
    parser.add_argument("--output-dir", default="outputs/multitask")
    parser.add_argument("--output", default=None, help="write the figures as JSON")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    data = load(tokenizer, args)
    controller = run_controller(args, tokenizer, data)
    if args.skip_single:
        print(f"\ncontroller test accuracy: {controller['accuracy']} ({controller['seconds']:.0f} s)")
        return
    single = {task: run_single(args, tokenizer, data, task) for task in TASKS}

    print(f"\nMiniLM-L6, {args.train_per_task} training examples per task, {args.epochs} epochs, lr "
          f"{args.learning_rate}, seed {args.seed}; test accuracy")
    print("| task | controller (joint, mixed batches) | single-task adapter | difference |")
    print("|---|---|---|---|")
    for task in TASKS:
        c, s = controller["accuracy"][task], single[task]["accuracy"]
        print(f"| {task} | {c:.4f} | {s:.4f} | {c - s:+.4f} |")
    print(f"controller: {controller['trainable']:,} trainable, {controller['seconds']:.0f} s; single-task: "
          f"{sum(s['trainable'] for s in single.values()):,} trainable, "
          f"{sum(s['seconds'] for s in single.values()):.0f} s")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"args": vars(args), "controller": controller, "single": single}, f, indent=2)


if __name__ == "__main__":
    main()
