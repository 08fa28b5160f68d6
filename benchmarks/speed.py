"""Forward and train-step time of adapters vs the base model, as ratios measured in one run.

    python benchmarks/speed.py                 # bert-base shape (12 x 768, random weights), batch 8, length 128
    python benchmarks/speed.py --quick         # a small shape, to check the script

Every variant is timed in interleaved rounds (base, houlsby, ..., base, houlsby, ...) so machine noise hits all of
them alike; the figure is the median over rounds, divided by the base model's median. Writes a markdown table to
stdout and, with --output, a JSON file.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import BertConfig, BertForSequenceClassification

import peft_bottleneck

VARIANTS = {
    "base": None,
    "houlsby": lambda: peft_bottleneck.BottleneckConfig(task_type="SEQ_CLS"),
    "pfeiffer": lambda: peft_bottleneck.BottleneckConfig(task_type="SEQ_CLS", placement="pfeiffer"),
    "parallel": lambda: peft_bottleneck.ParallelAdapterConfig(task_type="SEQ_CLS"),
    "lora (peft, r=8, q+v)": lambda: LoraConfig(task_type="SEQ_CLS", r=8, target_modules=["query", "value"]),
}


def bert_base(quick: bool) -> BertForSequenceClassification:
    shape = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512) if quick else {}
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(**shape)).eval()


def build(name, base):
    model = copy.deepcopy(base)
    factory = VARIANTS[name]
    if factory is None:
        for p in model.parameters():
            p.requires_grad = True  # the base row is full fine-tuning for the train step
        return model
    return get_peft_model(model, factory())


def time_forward(model, batch):
    model.eval()
    with torch.inference_mode():
        start = time.perf_counter()
        model(**batch)
        return time.perf_counter() - start


def time_train_step(model, batch, optimizer):
    model.train()
    start = time.perf_counter()
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)

    base = bert_base(args.quick)
    models = {name: build(name, base) for name in VARIANTS}
    optimizers = {
        name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5) for name, m in models.items()
    }
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, base.config.vocab_size, (args.batch_size, args.length), generator=generator)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.zeros(args.batch_size, dtype=torch.long)}

    forward = {name: [] for name in models}
    train = {name: [] for name in models}
    for name, model in models.items():  # warm-up
        time_forward(model, batch)
        time_train_step(model, batch, optimizers[name])
    for _ in range(args.rounds):
        for name, model in models.items():
            forward[name].append(time_forward(model, batch))
            train[name].append(time_train_step(model, batch, optimizers[name]))

    base_forward, base_train = statistics.median(forward["base"]), statistics.median(train["base"])
    rows = []
    for name, model in models.items():
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rows.append({
            "variant": name,
            "forward_s": statistics.median(forward[name]),
            "forward_ratio": statistics.median(forward[name]) / base_forward,
            "train_step_s": statistics.median(train[name]),
            "train_step_ratio": statistics.median(train[name]) / base_train,
            "trainable_params": trainable,
        })
    shape = f"{base.config.num_hidden_layers}x{base.config.hidden_size}, batch {args.batch_size}, length {args.length}"
    print(f"\nbert-base shape ({shape}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} interleaved rounds")
    print("| variant | forward (s) | forward / base | train step (s) | train step / base (full FT) | trainable |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['forward_s']:.3f} | {r['forward_ratio']:.3f} | {r['train_step_s']:.3f} | "
              f"{r['train_step_ratio']:.3f} | {r['trainable_params']:,} |")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"shape": shape, "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
