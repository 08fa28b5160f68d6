"""AdapterFusion on real data: does fusing a topic adapter help the sentiment task?

    python benchmarks/fusion.py                       # 3 seeds
    python benchmarks/fusion.py --quick --seeds 0     # a smoke run

The bundled MiniLM-L6; per seed: a Houlsby adapter trained on Rotten Tomatoes sentiment, one on BBC topics (each
with its own head), then (a) a Fuse("sentiment", "topic") fusion trained for sentiment with a fresh head, both
adapters frozen, and (b) Average("sentiment", "topic") with the sentiment head (nothing trained). Test accuracy on
sentiment for the sentiment adapter alone, the fusion and the average, and the fusion's attention weights per layer
(mean over the last test batch), as JSON and a plot.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tokenized(splits, tokenizer, n_train, n_eval, length):
    splits["train"] = splits["train"].select(range(min(n_train, len(splits["train"]))))
    for name in ("validation", "test"):
        splits[name] = splits[name].select(range(min(n_eval, len(splits[name]))))
    return splits.map(lambda b: tokenizer(b["text"], truncation=True, max_length=length), batched=True,
                      remove_columns=["text"])


def first_classes_loss(classes: int):
    """Cross-entropy over the head's first ``classes`` logits: sentiment (2 classes) shares the 5-way head shape of
    the topic task, and a softmax over all 5 collapses it to the majority class (0.580) in this short budget."""
    import torch.nn.functional as F

    return lambda outputs, labels, num_items_in_batch=None: F.cross_entropy(outputs["logits"][:, :classes], labels)


def train(model, data, collator, lr, epochs, seed, out, classes):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=out, per_device_train_batch_size=32, num_train_epochs=epochs,
                             learning_rate=lr, report_to=[], save_strategy="no", disable_tqdm=True, seed=seed,
                             use_cpu=True, dataloader_pin_memory=False, logging_strategy="no")
    trainer = Trainer(model=model, args=args, train_dataset=data["train"], data_collator=collator,
                      compute_loss_func=first_classes_loss(classes))
    trainer.train()
    return trainer


def accuracy(trainer, split, classes) -> float:
    prediction = trainer.predict(split)
    return float((prediction.predictions[:, :classes].argmax(-1) == prediction.label_ids).mean())


def run_seed(seed, args, tokenizer, sentiment, topic):
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

    import peft_bottleneck as pb
    from peft_bottleneck.bundled import minilm_path

    collator = DataCollatorWithPadding(tokenizer)
    torch.manual_seed(seed)
    base = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=5)
    model = get_peft_model(base, pb.BottleneckConfig(task_type="SEQ_CLS"), adapter_name="topic")
    model.add_adapter("sentiment", pb.BottleneckConfig(task_type="SEQ_CLS"))
    out = f"/tmp/fusion-bench-{seed}"
    model.set_adapter("topic")
    start = time.perf_counter()
    topic_trainer = train(model, topic, collator, args.lr, args.epochs, seed, out, classes=5)
    topic_accuracy = accuracy(topic_trainer, topic["test"], 5)
    model.set_adapter("sentiment")  # classes 0-1 of the 5-way head copy of this adapter
    trainer = train(model, sentiment, collator, args.lr, args.epochs, seed, out, classes=2)
    alone = accuracy(trainer, sentiment["test"], 2)
    pb.compose(model, pb.Average("sentiment", "topic"))
    average = accuracy(trainer, sentiment["test"], 2)
    pb.compose(model, None)
    pb.add_fusion(model, pb.Fuse("sentiment", "topic"))
    fusion_trainer = train(model, sentiment, collator, args.fusion_lr, args.epochs, seed, out, classes=2)
    fused = accuracy(fusion_trainer, sentiment["test"], 2)
    attention = {name: values.tolist() for name, values in pb.fusion_attention(model).items()}
    return {"seed": seed, "topic_adapter_on_topics": topic_accuracy, "sentiment_alone": alone, "average": average,
            "fusion": fused, "fusion_attention": attention, "seconds": time.perf_counter() - start}


def summary(runs) -> str:
    def mean(key):
        values = [r[key] for r in runs]
        return f"{statistics.mean(values):.4f}" + (f" +- {statistics.stdev(values):.4f}" if len(values) > 1 else "")

    lines = ["| on sentiment (test) | accuracy, mean over seeds |", "|---|---|",
             f"| sentiment adapter alone | {mean('sentiment_alone')} |", f"| Fuse(sentiment, topic) | {mean('fusion')} |",
             f"| Average(sentiment, topic), sentiment head | {mean('average')} |",
             f"\n(topic adapter on topics: {mean('topic_adapter_on_topics')}; seeds {[r['seed'] for r in runs]})"]
    return "\n".join(lines)


def plot(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(runs[0]["fusion_attention"], key=lambda n: [int(t) if t.isdigit() else t for t in n.split(".")])
    weights = [statistics.mean(r["fusion_attention"][n][0] for r in runs) for n in names]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(range(len(names)), weights, label="sentiment")
    ax.bar(range(len(names)), [1 - w for w in weights], bottom=weights, label="topic")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([n.split("layer.")[-1].replace(".output.dense", "").replace("attention", "att")
                        for n in names], rotation=45, fontsize=7)
    ax.set_ylabel("fusion attention (mean)")
    ax.set_title("AdapterFusion weights per adapted module (layer.position)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-samples", type=int, default=1000)
    parser.add_argument("--eval-samples", type=int, default=1000)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--fusion-lr", type=float, default=1e-3)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", default="benchmarks/results/fusion_minilm.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_samples, args.eval_samples, args.epochs = min(args.train_samples, 64), min(args.eval_samples, 64), 1

    import transformers
    from transformers import AutoTokenizer

    from peft_bottleneck.bundled import minilm_path, sentiment_splits, topic_splits

    transformers.logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    sentiment = tokenized(sentiment_splits(), tokenizer, args.train_samples, args.eval_samples, args.length)
    topic = tokenized(topic_splits(), tokenizer, args.train_samples, args.eval_samples, args.length)
    runs = []
    for seed in args.seeds:
        runs.append(run_seed(seed, args, tokenizer, sentiment, topic))
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "fusion_attention"}), flush=True)
    table = summary(runs)
    print(table)
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w") as f:
        json.dump({"settings": vars(args), "runs": runs, "table": table}, f, indent=1)
    plot(runs, os.path.splitext(args.output)[0] + ".png")


if __name__ == "__main__":
    main()
