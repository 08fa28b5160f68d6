"""Accuracy table: MiniLM-L6 on bundled sentiment and BBC topics, full fine-tuning vs head only vs our adapters vs
PEFT LoRA, 3 seeds, learning rate per method chosen on validation only.

    python benchmarks/accuracy.py                       # both tasks, every method (180 runs)
    python benchmarks/accuracy.py --tasks topic --methods houlsby lora --seeds 0 --quick   # smoke run

Protocol: the new classifier head trains at its own rate (``--head-learning-rate``, default
``peft_bottleneck.RECOMMENDED_HEAD_LEARNING_RATE``; ``same`` trains it at the method's rate, as the 2026-11 and
2026-12-03 tables did); every learning rate of a method's grid is trained with every seed (``--choose-on mean``;
``first-seed``: with the first seed only, as those tables did); when the best mean validation accuracy sits at an
edge of the grid, one more rate a step beyond that edge is tried; the rate with the best mean validation accuracy
is kept (test is never looked at), and any remaining seeds are trained at that rate. Reported: test accuracy and
macro-F1 (mean and standard deviation over the seeds), trainable-parameter share, training wall time.
Finished runs are kept in the JSON (``--output``), so an interrupted run resumes where it stopped. Writes a
markdown table (``.md``) and a plot (``.png``) next to the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)
from transformers.utils import logging as hf_logging  # noqa: E402

from peft_bottleneck import (  # noqa: E402
    RECOMMENDED_HEAD_LEARNING_RATE,
    BottleneckConfig,
    CompacterConfig,
    LowRankConfig,
    ParallelAdapterConfig,
    create_adapter_optimizer,
)
from peft_bottleneck.bundled import minilm_path, sentiment_splits, topic_splits  # noqa: E402
from peft_bottleneck.metrics import load_classification_metric  # noqa: E402

RESULTS = Path(__file__).parent / "results"

# task: (loader, training examples, max length in tokens). Sized for a 2-core CPU: 32 runs per task.
TASKS = {"sentiment": (sentiment_splits, 1200, 64), "topic": (topic_splits, 600, 64)}
MAX_VALIDATION = 500  # the rate choice needs no more; test stays whole

# method: (how the model is made, learning-rate grid). Grids follow each method's usual range.
METHODS = {
    "full": ("full", (3e-5, 1e-4, 3e-4)),
    "head-only": ("head", (3e-3, 1e-2)),
    "houlsby": (lambda: BottleneckConfig(task_type="SEQ_CLS"), (1e-3, 3e-3)),
    "pfeiffer": (lambda: BottleneckConfig(task_type="SEQ_CLS", placement="pfeiffer"), (1e-3, 3e-3)),
    "parallel": (lambda: ParallelAdapterConfig(task_type="SEQ_CLS"), (1e-3, 3e-3)),
    "compacter": (lambda: CompacterConfig(task_type="SEQ_CLS"), (3e-3, 1e-2)),
    "compacter++": (lambda: CompacterConfig(task_type="SEQ_CLS", placement="pfeiffer"), (3e-3, 1e-2)),
    "compacter-rank4": (lambda: CompacterConfig(task_type="SEQ_CLS", phm_rank=4), (3e-3, 1e-2)),  # the 12-03 default
    "low-rank": (lambda: LowRankConfig(task_type="SEQ_CLS"), (3e-3, 1e-2)),
    "lora": (lambda: LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16), (1e-3, 3e-3)),
}
# method: extra TrainingArguments for it (e.g. a warm-up ablation row); the default is the table's protocol.
TRAINING_OVERRIDES: dict[str, dict] = {}
LABELS = {"full": "full fine-tuning", "head-only": "head only", "houlsby": "Houlsby", "pfeiffer": "Pfeiffer",
          "parallel": "parallel", "compacter": "Compacter", "compacter++": "Compacter++",
          "compacter-rank4": "Compacter, rank 4",
          "low-rank": "low-rank (r=1)", "lora": "PEFT LoRA r8"}


def build_model(method: str, num_labels: int):
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=num_labels)
    make, _ = METHODS[method]
    if make == "head":
        for name, parameter in model.named_parameters():
            parameter.requires_grad = name.startswith("classifier")
    elif make != "full":
        model = get_peft_model(model, make())
    return model


def load_task(task: str, tokenizer, quick: bool, n_train: int | None = None):
    """The task's splits, tokenized; ``n_train`` replaces the task's training-set size (another budget)."""
    loader, default_n_train, max_length = TASKS[task]
    n_train = n_train or default_n_train
    splits = loader()
    if quick:
        n_train = 64
        splits["validation"] = splits["validation"].select(range(64))
        splits["test"] = splits["test"].select(range(64))
    splits["train"] = splits["train"].select(range(min(n_train, len(splits["train"]))))
    splits["validation"] = splits["validation"].select(range(min(MAX_VALIDATION, len(splits["validation"]))))
    tokenized = splits.map(lambda b: tokenizer(b["text"], truncation=True, max_length=max_length), batched=True,
                           remove_columns=["text"])
    return tokenized, len(set(splits["train"]["label"]))


def head_rate_optimizer(method: str, model, learning_rate: float, head_learning_rate: float | None):
    """The optimizer for a run: None (the Trainer's own, one rate) when the head trains at the method's rate or
    the head is all that trains; else the body / adapters at ``learning_rate`` and the head at its own rate."""
    make = METHODS[method][0]
    if head_learning_rate is None or make == "head":
        return None
    if make != "full":
        return create_adapter_optimizer(model, lr=learning_rate, head_lr=head_learning_rate, weight_decay=0.0)
    head = [p for n, p in model.named_parameters() if n.startswith("classifier.")]
    body = [p for n, p in model.named_parameters() if not n.startswith("classifier.")]
    return torch.optim.AdamW([{"params": body, "lr": learning_rate}, {"params": head, "lr": head_learning_rate}],
                             lr=learning_rate, weight_decay=0.0)


def train_once(method, task, data, num_labels, tokenizer, learning_rate, seed, args) -> dict:
    torch.manual_seed(seed)
    model = build_model(method, num_labels)
    optimizer = head_rate_optimizer(method, model, learning_rate, getattr(args, "head_learning_rate", None))
    metric = load_classification_metric()
    protocol = dict(per_device_train_batch_size=32, per_device_eval_batch_size=128, learning_rate=learning_rate,
                    num_train_epochs=args.epochs, warmup_steps=0.1, weight_decay=0.0, save_strategy="no",
                    eval_strategy="no", report_to=[], seed=seed, logging_steps=50, disable_tqdm=True,
                    dataloader_num_workers=0)
    training_args = TrainingArguments(output_dir=os.path.join(args.scratch_dir, task, method),
                                      **{**protocol, **TRAINING_OVERRIDES.get(method, {})})
    trainer = Trainer(model=model, args=training_args, train_dataset=data["train"],
                      data_collator=DataCollatorWithPadding(tokenizer), optimizers=(optimizer, None),
                      compute_metrics=lambda p: metric.compute(predictions=np.argmax(p.predictions, -1),
                                                               references=p.label_ids))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    validation = trainer.evaluate(data["validation"], metric_key_prefix="validation")
    test = trainer.evaluate(data["test"], metric_key_prefix="test")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"task": task, "method": method, "learning_rate": learning_rate, "seed": seed, "seconds": seconds,
            "validation_accuracy": validation["validation_accuracy"], "test_accuracy": test["test_accuracy"],
            "test_macro_f1": test["test_macro_f1"], "trainable": trainable, "total": total}


class RunStore:
    """Finished runs in one JSON file, written after every run so an interrupted benchmark resumes."""

    def __init__(self, path: Path, settings: dict):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        saved = json.loads(path.read_text()) if path.exists() else {"settings": settings, "runs": []}
        # stores of the 2026-11 / 2026-12-03 protocol lack these keys: one head rate, rate chosen on the first seed
        saved["settings"] = {"head_learning_rate": None, "choose_on": "first-seed", **saved["settings"]}
        settings = {"head_learning_rate": None, "choose_on": "first-seed", **settings}
        saved_tasks = saved["settings"]["tasks"]
        clash = [t for t, v in settings["tasks"].items() if saved_tasks.get(t, v) != v]
        rest = {k: v for k, v in settings.items() if k != "tasks"}
        if clash or {k: v for k, v in saved["settings"].items() if k != "tasks"} != rest:
            raise ValueError(f"{path} holds runs made with other settings ({saved['settings']}); pass another "
                             "--output or delete it.")
        self.settings = {**rest, "tasks": {**saved_tasks, **settings["tasks"]}}  # a task may be added later
        self.runs = saved["runs"]

    def find(self, task, method, learning_rate, seed):
        for run in self.runs:
            if (run["task"], run["method"], run["learning_rate"], run["seed"]) == (task, method, learning_rate, seed):
                return run
        return None

    def add(self, run: dict) -> None:
        """Append under a lock, re-reading the file first: processes running other tasks may share one store."""
        import fcntl

        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.path.exists():
                saved = json.loads(self.path.read_text())
                self.settings["tasks"] = {**saved["settings"]["tasks"], **self.settings["tasks"]}
                self.runs = saved["runs"]
            if self.find(run["task"], run["method"], run["learning_rate"], run["seed"]) is not None:
                return  # another process finished the same run first (runs are deterministic)
            self.runs.append(run)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"settings": self.settings, "runs": self.runs}, indent=1))
            tmp.replace(self.path)


def grid_seeds(seeds, choose_on: str) -> list[int]:
    """The seeds every grid rate is trained with: all of them (``mean``) or the first (``first-seed``)."""
    return list(seeds) if choose_on == "mean" else list(seeds[:1])


def chosen_rate(runs, method, task, choose_on: str, seeds) -> float | None:
    """The rate the protocol keeps: the best validation accuracy of the grid, as the mean over ``grid_seeds``
    (ties: the lower rate). Runs at a rate that lacks some of those seeds do not compete."""
    seeds = grid_seeds(seeds, choose_on)
    by_rate: dict[float, dict[int, float]] = {}
    for r in runs:
        if r["method"] == method and r["task"] == task and r["seed"] in seeds:
            by_rate.setdefault(r["learning_rate"], {})[r["seed"]] = r["validation_accuracy"]
    complete = {rate: statistics.mean(v.values()) for rate, v in by_rate.items() if len(v) == len(seeds)}
    return max(sorted(complete), key=complete.get) if complete else None


def run_method(store, method, task, data, num_labels, tokenizer, args) -> list[dict]:
    """The grid (with every seed, or the first: the store's ``choose_on``), the best rate by validation accuracy,
    one rate a step beyond when the best sits at an edge, then every seed at the best rate."""

    def get(learning_rate, seed):
        run = store.find(task, method, learning_rate, seed)
        if run is None:
            run = train_once(method, task, data, num_labels, tokenizer, learning_rate, seed, args)
            store.add(run)
            print(f"{task:9s} {method:12s} lr {learning_rate:g} seed {seed}: validation "
                  f"{run['validation_accuracy']:.4f} test {run['test_accuracy']:.4f} ({run['seconds']:.0f} s)",
                  flush=True)
        return run

    choose_on = store.settings["choose_on"]
    seeds = grid_seeds(args.seeds, choose_on)
    rates = list(METHODS[method][1])
    for learning_rate in rates:
        for seed in seeds:
            get(learning_rate, seed)
    best = chosen_rate(store.runs, method, task, choose_on, args.seeds)
    if len(rates) > 1 and best in (rates[0], rates[-1]):  # optimum at an edge: one step beyond
        low, high = (rates[0], rates[1]) if best == rates[0] else (rates[-1], rates[-2])
        for seed in seeds:
            get(float(f"{low * low / high:.3g}"), seed)
        best = chosen_rate(store.runs, method, task, choose_on, args.seeds)
    return [get(best, seed) for seed in args.seeds]


def summarize(runs: list[dict]) -> dict:
    def mean_std(key):
        values = [run[key] for run in runs]
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    return {"learning_rate": runs[0]["learning_rate"], "seeds": len(runs), "accuracy": mean_std("test_accuracy"),
            "macro_f1": mean_std("test_macro_f1"), "share": runs[0]["trainable"] / runs[0]["total"],
            "trainable": runs[0]["trainable"], "seconds": statistics.mean(run["seconds"] for run in runs)}


def head_rate_text(head_learning_rate) -> str:
    if head_learning_rate is None:
        return "the head trains at the method's rate"
    return f"the new head trains at {head_learning_rate:g} (head only: at the grid's rate)"


def markdown(summaries: dict, args) -> str:
    chosen = "mean validation over the seeds" if args.choose_on == "mean" else "validation with the first seed"
    lines = [f"MiniLM-L6 (bundled), {args.epochs:g} epochs, batch 32, seeds {args.seeds}; learning rate chosen on "
             f"{chosen}; {head_rate_text(args.head_learning_rate)}; test accuracy and "
             "macro-F1 as mean +- std over seeds.", ""]
    for task, by_method in summaries.items():
        full = by_method.get("full")
        lines += [f"**{task}**", "",
                  "| method | lr | test accuracy | test macro-F1 | vs full FT (points) | trained params | share | "
                  "train time (s) |", "|---|---|---|---|---|---|---|---|"]
        for method, s in by_method.items():
            gap = f"{100 * (s['accuracy'][0] - full['accuracy'][0]):+.1f}" if full else "-"
            lines.append(f"| {LABELS[method]} | {s['learning_rate']:g} | {s['accuracy'][0]:.4f} +- "
                         f"{s['accuracy'][1]:.4f} | {s['macro_f1'][0]:.4f} +- {s['macro_f1'][1]:.4f} | {gap} | "
                         f"{s['trainable']:,} | {100 * s['share']:.2f}% | {s['seconds']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def plot(summaries: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summaries), figsize=(6 * len(summaries), 4), squeeze=False)
    for ax, (task, by_method) in zip(axes[0], summaries.items()):
        names = list(by_method)
        means = [100 * by_method[m]["accuracy"][0] for m in names]
        stds = [100 * by_method[m]["accuracy"][1] for m in names]
        ax.bar(range(len(names)), means, yerr=stds, capsize=3, color="tab:blue")
        ax.set_xticks(range(len(names)), [f"{LABELS[m]}\n{100 * by_method[m]['share']:.3g}%" for m in names],
                      rotation=45, ha="right", fontsize=8)
        ax.set_ylim(max(0, min(means) - 10), 100)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"MiniLM-L6, {task} (label: trained share)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def head_rate_arg(text: str) -> float | None:
    if text == "same":
        return None
    rate = float(text)
    if not rate > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 or 'same', got {text}")
    return rate


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=list(TASKS))
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--quick", action="store_true", help="64 examples per split: checks the script only")
    parser.add_argument("--output", type=Path, default=RESULTS / "accuracy_minilm_head_rate.json")
    parser.add_argument("--scratch-dir", default="outputs/accuracy")
    parser.add_argument("--head-learning-rate", type=head_rate_arg, default=RECOMMENDED_HEAD_LEARNING_RATE,
                        help="rate of the new classifier head; 'same': the method's rate (the 2026-11 protocol)")
    parser.add_argument("--choose-on", choices=("mean", "first-seed"), default="mean",
                        help="rate choice: mean validation over every seed (each grid rate trained with every seed), "
                        "or the first seed's (the 2026-11 protocol)")
    args = parser.parse_args(argv)
    hf_logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    store = RunStore(args.output, {"epochs": args.epochs, "quick": args.quick,
                                   "head_learning_rate": args.head_learning_rate, "choose_on": args.choose_on,
                                   "tasks": {t: list(TASKS[t][1:]) for t in args.tasks}})
    summaries = {}
    for task in args.tasks:
        data, num_labels = load_task(task, tokenizer, args.quick)
        summaries[task] = {method: summarize(run_method(store, method, task, data, num_labels, tokenizer, args))
                           for method in args.methods}
    table = markdown(summaries, args)
    print("\n" + table)
    args.output.with_suffix(".md").write_text(table + "\n")
    plot(summaries, args.output.with_suffix(".png"))
    return summaries


if __name__ == "__main__":
    main()
