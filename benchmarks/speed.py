"""Forward and train-step time of our adapters vs the base model, PEFT LoRA and AdapterHub, as ratios in one run.

    python benchmarks/speed.py                    # bert-base shape (12 x 768, random weights), batch 8, length 128
    python benchmarks/speed.py --adapterhub-python .venv-adapterhub/bin/python   # + the AdapterHub peer
    python benchmarks/speed.py --quick            # a small shape, to check the script

Our variants are timed in interleaved rounds (base, houlsby, ..., base, houlsby, ...) so machine noise hits all of
them alike; each figure is the median over rounds, and ratios divide by the base model's median from the same
rounds. The AdapterHub peer (transformers 4.57) runs in its own process right after, with its own base model, so
its figures are compared both in seconds and as ratios to its own base. The base row's train step is full
fine-tuning.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile

import torch
from peft import LoraConfig, get_peft_model
from transformers import BertConfig, BertForSequenceClassification

import peft_bottleneck

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import bert_base_config_kwargs, measure, random_batch  # noqa: E402

VARIANTS = {
    "base": None,
    "houlsby": lambda: peft_bottleneck.BottleneckConfig(task_type="SEQ_CLS"),
    "pfeiffer": lambda: peft_bottleneck.BottleneckConfig(task_type="SEQ_CLS", placement="pfeiffer"),
    "parallel": lambda: peft_bottleneck.ParallelAdapterConfig(task_type="SEQ_CLS"),
    "compacter": lambda: peft_bottleneck.CompacterConfig(task_type="SEQ_CLS"),
    "compacter++": lambda: peft_bottleneck.CompacterConfig(task_type="SEQ_CLS", placement="pfeiffer"),
    "lora (peft, r=8, q+v)": lambda: LoraConfig(task_type="SEQ_CLS", r=8, target_modules=["query", "value"]),
}


def build(name, base):
    model = copy.deepcopy(base)
    if VARIANTS[name] is None:
        return model  # every parameter trains: full fine-tuning
    return get_peft_model(model, VARIANTS[name]())


def run_peer(python: str, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "peer.json")
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "adapterhub_speed.py")
        command = [python, script, "--output", out, "--batch-size", str(args.batch_size), "--length",
                   str(args.length), "--rounds", str(args.rounds)] + (["--quick"] if args.quick else [])
        subprocess.run(command, check=True)
        with open(out) as f:
            return json.load(f)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--adapterhub-python", default=None, help="python of a venv with AdapterHub `adapters`")
    parser.add_argument("--output", default=None, help="write the figures as JSON")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    base = BertForSequenceClassification(BertConfig(**bert_base_config_kwargs(args.quick))).eval()
    models = {name: build(name, base) for name in VARIANTS}
    ours = measure(models, random_batch(base.config.vocab_size, args.batch_size, args.length), args.rounds)
    peer = run_peer(args.adapterhub_python, args) if args.adapterhub_python else None

    shape = f"{base.config.num_hidden_layers}x{base.config.hidden_size}, batch {args.batch_size}, length {args.length}"
    print(f"\nbert-base shape ({shape}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} interleaved rounds")
    print("| variant | forward (s) | forward / base | train step (s) | train step / base | trainable |")
    print("|---|---|---|---|---|---|")
    for name, r in ours.items():
        print(f"| {name} | {r['forward_s']:.3f} | {r['forward_s'] / ours['base']['forward_s']:.3f} | "
              f"{r['train_step_s']:.3f} | {r['train_step_s'] / ours['base']['train_step_s']:.3f} | "
              f"{r['trainable_params']:,} |")
    for name in ("compacter", "compacter++"):
        houlsby_like = "houlsby" if name == "compacter" else "pfeiffer"
        print(f"{name}: train step {ours[name]['train_step_s'] / ours[houlsby_like]['train_step_s']:.3f}x "
              f"{houlsby_like}, parameters {ours[name]['trainable_params'] / ours[houlsby_like]['trainable_params']:.3f}x")
    if peer:
        theirs = peer["results"]
        print(f"\nAdapterHub adapters {peer['versions']['adapters']} (transformers {peer['versions']['transformers']}),"
              " same shape, own process right after")
        print("| config | ours train step (s) | AdapterHub train step (s) | ours / AdapterHub | ours / our base | "
              "AdapterHub / its base | ours forward / AdapterHub forward |")
        print("|---|---|---|---|---|---|---|")
        for name, r in theirs.items():
            if name == "base":
                continue
            print(f"| {name} | {ours[name]['train_step_s']:.3f} | {r['train_step_s']:.3f} | "
                  f"{ours[name]['train_step_s'] / r['train_step_s']:.3f} | "
                  f"{ours[name]['train_step_s'] / ours['base']['train_step_s']:.3f} | "
                  f"{r['train_step_s'] / theirs['base']['train_step_s']:.3f} | "
                  f"{ours[name]['forward_s'] / r['forward_s']:.3f} |")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"shape": shape, "ours": ours, "adapterhub": peer}, f, indent=2)


if __name__ == "__main__":
    main()
