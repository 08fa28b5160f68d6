"""Cost of composition: Stack of 2 and Fuse of 2 and 4 against one adapter and the base model, ours and AdapterHub's.

    python benchmarks/composition_speed.py --adapterhub-python .venv-adapterhub/bin/python
    python benchmarks/composition_speed.py --quick

bert-base shape (random weights), batch 8, length 128, Houlsby adapters (reduction factor 16) in every variant;
forward and train step (for Fuse: the fusion trains, the adapters are frozen; otherwise the adapters train), median
of interleaved rounds, ratios to the base model of the same rounds. The same script runs in AdapterHub's venv as
the peer (``--peer``), right after ours.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import bert_base_config_kwargs, measure, random_batch  # noqa: E402

VARIANTS = ("one", "stack2", "fuse2", "fuse4")
NAMES = ("a", "b", "c", "d")


def base_model(quick: bool):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(**bert_base_config_kwargs(quick))).eval()


def ours(base, variant: str):
    import peft_bottleneck as pb
    from peft import get_peft_model

    count = {"one": 1, "stack2": 2, "fuse2": 2, "fuse4": 4}[variant]
    model = get_peft_model(copy.deepcopy(base), pb.BottleneckConfig(task_type="SEQ_CLS"), adapter_name="a")
    for name in NAMES[1:count]:
        model.add_adapter(name, pb.BottleneckConfig(task_type="SEQ_CLS"))
    if variant == "stack2":
        pb.compose(model, pb.Stack("a", "b"))
        for name in ("a", "b"):
            model.base_model.set_requires_grad(name, True)
    elif variant.startswith("fuse"):
        pb.add_fusion(model, pb.Fuse(*NAMES[:count]))
    return model


def peer(base, variant: str):
    import adapters
    from adapters.composition import Fuse, Stack

    count = {"one": 1, "stack2": 2, "fuse2": 2, "fuse4": 4}[variant]
    model = copy.deepcopy(base)
    adapters.init(model)
    for name in NAMES[:count]:
        model.add_adapter(name, config="double_seq_bn")
    if variant == "one":
        model.train_adapter("a")
    elif variant == "stack2":
        model.train_adapter(Stack("a", "b"))
    else:
        fuse = Fuse(*NAMES[:count])
        model.add_adapter_fusion(fuse)
        model.train_adapter_fusion(fuse)
    return model


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    base = base_model(args.quick)
    batch = random_batch(base.config.vocab_size, args.batch_size, args.length)
    build = peer if args.peer else ours
    models = {"base": base, **{v: build(base, v) for v in VARIANTS}}
    for p in base.parameters():
        p.requires_grad = True  # the base's train step is full fine-tuning, as in speed.py
    return measure(models, batch, args.rounds)


def ratios(results: dict) -> dict:
    base = results["base"]
    return {v: {"forward": r["forward_s"] / base["forward_s"], "train_step": r["train_step_s"] / base["train_step_s"],
                "forward_s": r["forward_s"], "train_step_s": r["train_step_s"], "trainable": r["trainable_params"]}
            for v, r in results.items() if v != "base"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=max(1, torch.get_num_threads()))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--adapterhub-python", default=None)
    parser.add_argument("--output", default=None)
    parser.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick and argv is None and "--rounds" not in sys.argv:
        args.rounds, args.batch_size, args.length = 1, 2, 16
    if args.peer:
        print(json.dumps(run(args)))
        return
    results = {"ours": ratios(run(args))}
    if args.adapterhub_python:
        command = [args.adapterhub_python, os.path.abspath(__file__), "--peer", "--batch-size", str(args.batch_size),
                   "--length", str(args.length), "--rounds", str(args.rounds), "--threads", str(args.threads)]
        done = subprocess.run(command + (["--quick"] if args.quick else []), capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-3000:])
        results["adapterhub"] = ratios(json.loads(done.stdout.strip().splitlines()[-1]))
    lines = ["| variant | ours: forward / base | ours: train step / base | AdapterHub: forward / base | "
             "AdapterHub: train step / base | ours / AdapterHub, train step |", "|---|---|---|---|---|---|"]
    for variant in VARIANTS:
        o, p = results["ours"][variant], results.get("adapterhub", {}).get(variant)
        peer_cells = (f"{p['forward']:.3f} | {p['train_step']:.3f} | {o['train_step_s'] / p['train_step_s']:.3f}"
                      if p else "- | - | -")
        lines.append(f"| {variant} | {o['forward']:.3f} | {o['train_step']:.3f} | {peer_cells} |")
    one = results["ours"]["one"]["forward"] - 1
    stack = results["ours"]["stack2"]["forward"] - 1
    lines.append(f"\nStack of 2 adds {stack:.3f} of the base forward; one adapter adds {one:.3f} "
                 f"(target: at most twice, {2 * one:.3f}).")
    print("\n".join(lines))
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"settings": vars(args), "results": results, "table": "\n".join(lines)}, f, indent=1)


if __name__ == "__main__":
    main()
