"""Forward time, train-step time and peak training memory of our adapters vs the base model, PEFT LoRA and
AdapterHub, as ratios in one run.

    python benchmarks/speed.py                    # bert-base shape (12 x 768, random weights), batch 8, length 128
    python benchmarks/speed.py --model smollm2    # SmolLM2-135M (bundled, real weights), causal LM, batch 2
    python benchmarks/speed.py --adapterhub-python .venv-adapterhub/bin/python   # + the AdapterHub peer
    python benchmarks/speed.py --quick            # a small shape, to check the script

Our variants are timed in interleaved rounds (base, houlsby, ..., base, houlsby, ...) so machine noise hits all of
them alike; each figure is the median over rounds, and ratios divide by the base model's median from the same
rounds. The AdapterHub peer (transformers 4.57) runs in its own process right after, with its own base model of
the same shape (random weights for SmolLM2's shape: speed does not depend on the values), so its figures are
compared both in seconds and as ratios to its own base. The base row's train step is full fine-tuning.
Peak memory: each variant runs two train steps in a process of its own (Linux high-water mark, reset after the
model is loaded): weights, gradients, optimizer state and activations of that variant alone, plus the Python
process and its libraries (transformers 5 and PEFT here, transformers 4.57 for the peer), so compare the peaks
also as ratios to each side's own base.
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
from transformers import AutoModelForCausalLM, BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

import peft_bottleneck

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import (  # noqa: E402
    SMOLLM2_SHAPE,
    bert_base_config_kwargs,
    measure,
    peak_train_memory_mb,
    random_batch,
)

# model: (task type, LoRA targets, default batch size, Compacter reduction factor). SmolLM2's 576 // 32 = 18 is not
# divisible by phm_dim 4 (AdapterHub refuses it), so Compacter uses 576 // 16 = 36 there, on both sides.
MODELS = {"bert-base": ("SEQ_CLS", ["query", "value"], 8, 32), "smollm2": ("CAUSAL_LM", ["q_proj", "v_proj"], 2, 16)}
QUICK_LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=4000, tie_word_embeddings=True)


def variant_configs(model_name: str) -> dict:
    task_type, lora_targets, _, compacter_reduction = MODELS[model_name]
    return {
        "base": None,
        "houlsby": lambda: peft_bottleneck.BottleneckConfig(task_type=task_type),
        "pfeiffer": lambda: peft_bottleneck.BottleneckConfig(task_type=task_type, placement="pfeiffer"),
        "parallel": lambda: peft_bottleneck.ParallelAdapterConfig(task_type=task_type),
        "compacter": lambda: peft_bottleneck.CompacterConfig(task_type=task_type, reduction_factor=compacter_reduction),
        "compacter++": lambda: peft_bottleneck.CompacterConfig(
            task_type=task_type, placement="pfeiffer", reduction_factor=compacter_reduction),
        "low-rank (r=1)": lambda: peft_bottleneck.LowRankConfig(task_type=task_type),
        "lora (peft, r=8, q+v)": lambda: LoraConfig(task_type=task_type, r=8, target_modules=lora_targets),
    }


def base_model(model_name: str, quick: bool):
    torch.manual_seed(0)
    if model_name == "bert-base":
        return BertForSequenceClassification(BertConfig(**bert_base_config_kwargs(quick))).eval()
    if quick:
        return LlamaForCausalLM(LlamaConfig(**QUICK_LLAMA)).eval()
    from peft_bottleneck.bundled import smollm2_path

    return AutoModelForCausalLM.from_pretrained(smollm2_path(), dtype=torch.float32).eval()


def build(name, base, model_name):
    model = copy.deepcopy(base)
    make = variant_configs(model_name)[name]
    return model if make is None else get_peft_model(model, make())  # base: every parameter trains


def batch_for(base, args) -> dict:
    return random_batch(base.config.vocab_size, args.batch_size, args.length, causal=args.model != "bert-base")


def peer_shape(args) -> dict:
    compacter_reduction = MODELS[args.model][3]
    if args.model == "bert-base":
        return {"family": "bert", "config": bert_base_config_kwargs(args.quick), "compacter_reduction": 32}
    return {"family": "llama", "config": QUICK_LLAMA if args.quick else SMOLLM2_SHAPE,
            "compacter_reduction": compacter_reduction}


def common_flags(args) -> list[str]:
    return ["--batch-size", str(args.batch_size), "--length", str(args.length), "--rounds", str(args.rounds)]


def run_peer(python: str, args) -> dict:
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "adapterhub_speed.py")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "peer.json")
        command = [python, script, "--output", out, "--shape", json.dumps(peer_shape(args))] + common_flags(args)
        subprocess.run(command, check=True)
        with open(out) as f:
            return json.load(f)


def memory_in_subprocess(command: list[str]) -> dict:
    """Run one memory probe in a fresh process; it prints its figures as JSON on its last line."""
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def our_memory(name: str, args) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--model", args.model, "--memory-of", name]
    return memory_in_subprocess(command + common_flags(args) + (["--quick"] if args.quick else []))


def peer_memory(python: str, name: str, args) -> dict:
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "adapterhub_speed.py")
    return memory_in_subprocess([python, script, "--memory-of", name, "--shape", json.dumps(peer_shape(args))]
                                + common_flags(args))


def print_tables(ours: dict, peer: dict | None, args, shape: str) -> None:
    print(f"\n{args.model} ({shape}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} interleaved rounds; peak = resident memory of a process of its own during 2 train "
          "steps (Python, libraries and weights included)")
    print("| variant | forward (s) | forward / base | train step (s) | train step / base | peak MB | peak / base | "
          "trainable |")
    print("|---|---|---|---|---|---|---|---|")
    base = ours["base"]
    for name, r in ours.items():
        memory = (f"{r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] / base['peak_rss_mb']:.3f}"
                  if "peak_rss_mb" in r and "peak_rss_mb" in base else "- | -")
        print(f"| {name} | {r['forward_s']:.3f} | {r['forward_s'] / base['forward_s']:.3f} | "
              f"{r['train_step_s']:.3f} | {r['train_step_s'] / base['train_step_s']:.3f} | {memory} | "
              f"{r['trainable_params']:,} |")
    for name in ("compacter", "compacter++"):
        houlsby_like = "houlsby" if name == "compacter" else "pfeiffer"
        print(f"{name}: train step {ours[name]['train_step_s'] / ours[houlsby_like]['train_step_s']:.3f}x "
              f"{houlsby_like}, parameters {ours[name]['trainable_params'] / ours[houlsby_like]['trainable_params']:.3f}x")
    if not peer:
        return
    theirs = peer["results"]
    print(f"\nAdapterHub adapters {peer['versions']['adapters']} (transformers {peer['versions']['transformers']}),"
          " same shape, own process right after")
    print("| config | ours train step (s) | AdapterHub train step (s) | ours / AdapterHub | ours / our base | "
          "AdapterHub / its base | ours forward / AdapterHub forward | peak MB ours / AdapterHub | peak / own base, "
          "ours / AdapterHub | trainable ours / AdapterHub |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in theirs.items():
        if name == "base":
            continue
        print(f"| {name} | {ours[name]['train_step_s']:.3f} | {r['train_step_s']:.3f} | "
              f"{ours[name]['train_step_s'] / r['train_step_s']:.3f} | "
              f"{ours[name]['train_step_s'] / ours['base']['train_step_s']:.3f} | "
              f"{r['train_step_s'] / theirs['base']['train_step_s']:.3f} | "
              f"{ours[name]['forward_s'] / r['forward_s']:.3f} | {ours[name]['peak_rss_mb']:.0f} / {r['peak_rss_mb']:.0f} | "
              f"{ours[name]['peak_rss_mb'] / ours['base']['peak_rss_mb']:.3f} / "
              f"{r['peak_rss_mb'] / theirs['base']['peak_rss_mb']:.3f} | "
              f"{ours[name]['trainable_params']:,} / {r['trainable_params']:,} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="bert-base")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 for bert-base, 4 for smollm2")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--adapterhub-python", default=None, help="python of a venv with AdapterHub `adapters`")
    parser.add_argument("--memory-variants", nargs="*", default=None,
                        help="variants whose peak memory is probed, each in a process of its own (default: all)")
    parser.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)  # internal: one memory probe
    parser.add_argument("--output", default=None, help="write the figures as JSON")
    args = parser.parse_args(argv)
    args.batch_size = args.batch_size or MODELS[args.model][2]

    base = base_model(args.model, args.quick)
    if args.memory_of:
        model = build(args.memory_of, base, args.model)
        del base
        print(json.dumps(peak_train_memory_mb(model, batch_for(model, args))))
        return
    names = list(variant_configs(args.model))
    ours = measure({name: build(name, base, args.model) for name in names}, batch_for(base, args), args.rounds)
    probed = names if args.memory_variants is None else [n for n in names if n in args.memory_variants]
    for name in probed:
        ours[name].update(our_memory(name, args))
    peer = None
    if args.adapterhub_python:
        peer = run_peer(args.adapterhub_python, args)
        for name in peer["results"]:
            peer["results"][name].update(peer_memory(args.adapterhub_python, name, args))

    shape = (f"{base.config.num_hidden_layers}x{base.config.hidden_size}, batch {args.batch_size}, "
             f"length {args.length}")
    print_tables(ours, peer, args, shape)
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"model": args.model, "shape": shape, "ours": ours, "adapterhub": peer}, f, indent=2)


if __name__ == "__main__":
    main()
