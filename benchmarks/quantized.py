"""Adapters on a quantized base, QLoRA style: peak training memory, train-step time and the loss after a fixed short
run of a Houlsby adapter and of PEFT LoRA on SmolLM2-135M (bundled, real weights) with the base in float32, in
bitsandbytes 4-bit nf4 and in bitsandbytes 8-bit, in one run.

    python benchmarks/quantized.py                  # SmolLM2-135M, 30 steps, batch 4 x 64 tokens of review text
    python benchmarks/quantized.py --quick          # a tiny random Llama, to check the script

Each (base, adapter) pair runs in a process of its own, so its memory high-water mark is its own: the mark is reset
once the model is loaded and quantized, and the peak covers the fixed run (weights, gradients, AdamW state,
activations, the process and its libraries; memory freed while loading is handed back to the system first). All
pairs train on the same batches of bundled Rotten Tomatoes sentences (causal LM loss) with the same seed and
learning rate; the final loss is the mean over a fixed held-out
set of sentences after the run. Step time is the median over the run after two warm-up steps. Ratios divide by the
same adapter's float32-base row of the same run. On CPU bitsandbytes dequantizes each weight on every use, so a
quantized base saves memory and costs time here; on a GPU its kernels are fused.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import _status_kib  # noqa: E402

BASES = ("fp32", "nf4", "int8")
ADAPTERS = ("houlsby", "lora")
TINY_LLAMA = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, head_dim=32, vocab_size=4000, tie_word_embeddings=True)


def quantization_config(base: str):
    from transformers import BitsAndBytesConfig

    if base == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    if base == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def base_folder(quick: bool, scratch: str) -> str:
    if not quick:
        from peft_bottleneck.bundled import smollm2_path

        return str(smollm2_path())
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = os.path.join(scratch, "tiny-llama")
    if not os.path.exists(os.path.join(folder, "config.json")):
        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(**TINY_LLAMA)).save_pretrained(folder)
    return folder


def text_batches(folder: str, quick: bool, batch_size: int, length: int, steps: int, held_out: int):
    """Token batches of review sentences: ``steps`` training batches and ``held_out`` sentences to score."""
    from peft_bottleneck.bundled import sentiment_splits

    splits = sentiment_splits()
    if quick:
        vocab = TINY_LLAMA["vocab_size"]
        encode = lambda texts: [[3 + (ord(c) % (vocab - 3)) for c in t][:length] for t in texts]  # noqa: E731
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        encode = lambda texts: tokenizer(texts, truncation=True, max_length=length)["input_ids"]  # noqa: E731

    def batch(texts):
        rows = [ids + [0] * (length - len(ids)) for ids in encode(texts)]
        mask = [[1] * len(ids) + [0] * (length - len(ids)) for ids in encode(texts)]
        ids, attention = torch.tensor(rows), torch.tensor(mask)
        return {"input_ids": ids, "attention_mask": attention, "labels": ids.masked_fill(attention == 0, -100)}

    train = splits["train"]["text"][: steps * batch_size]
    test = splits["test"]["text"][:held_out]
    return [batch(train[i : i + batch_size]) for i in range(0, len(train), batch_size)], batch(test)


def adapter_config(adapter: str):
    from peft import LoraConfig

    import peft_bottleneck as pb

    if adapter == "houlsby":
        return pb.BottleneckConfig(task_type="CAUSAL_LM")
    return LoraConfig(task_type="CAUSAL_LM", r=8, target_modules=["q_proj", "v_proj"])


def run_one(base: str, adapter: str, args) -> dict:
    """Load, quantize, attach, then reset the memory mark and train; one pair per process."""
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    folder = base_folder(args.quick, args.scratch)
    batches, held_out = text_batches(folder, args.quick, args.batch_size, args.length, args.steps, args.held_out)
    torch.manual_seed(0)
    quantization = quantization_config(base)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, device_map="cpu",
                                                 **({"quantization_config": quantization} if quantization else {}))
    if quantization:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, adapter_config(adapter))
    weights_mb = model.get_memory_footprint() / 2**20
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.learning_rate)
    # the float32 weights read while quantizing are freed but stay with the allocator: hand them back first, so the
    # mark measures this model, not the loading
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    model.train()
    seconds, losses = [], []
    for inputs in batches:
        start = time.perf_counter()
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - start)
        losses.append(loss.item())
    peak = _status_kib("VmHWM")
    model.eval()
    with torch.no_grad():
        held_out_loss = model(**held_out).loss.item()
    return {"base": base, "adapter": adapter, "weights_mb": weights_mb, "rss_before_mb": before / 1024,
            "peak_rss_mb": peak / 1024, "train_step_s": statistics.median(seconds[2:] or seconds),
            "first_loss": losses[0], "last_train_loss": losses[-1], "held_out_loss": held_out_loss,
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def table(rows: list[dict]) -> str:
    reference = {r["adapter"]: r for r in rows if r["base"] == "fp32"}
    lines = ["| adapter | base | weights MB | RSS before MB | peak RSS MB | peak vs fp32 | train step s | "
             "step vs fp32 | first loss | held-out loss after run |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = reference.get(r["adapter"])
        ratio = lambda key: f"{r[key] / ref[key]:.2f}x" if ref else "-"  # noqa: E731
        lines.append(f"| {r['adapter']} | {r['base']} | {r['weights_mb']:.0f} | {r['rss_before_mb']:.0f} | "
                     f"{r['peak_rss_mb']:.0f} | "
                     f"{ratio('peak_rss_mb')} | {r['train_step_s']:.3f} | {ratio('train_step_s')} | "
                     f"{r['first_loss']:.3f} | {r['held_out_loss']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tiny random Llama and 4 steps")
    parser.add_argument("--steps", type=int, help="train steps (default 30, --quick 4)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--held-out", type=int, default=64, help="held-out sentences scored after the run")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--bases", nargs="+", choices=BASES, default=list(BASES))
    parser.add_argument("--adapters", nargs="+", choices=ADAPTERS, default=list(ADAPTERS))
    parser.add_argument("--scratch", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".scratch"))
    parser.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                         "quantized_smollm2.json"))
    parser.add_argument("--one", nargs=2, metavar=("BASE", "ADAPTER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.steps = args.steps or (4 if args.quick else 30)
    os.makedirs(args.scratch, exist_ok=True)
    if args.one:
        print(json.dumps(run_one(*args.one, args)))
        return
    rows = []
    settings = {k: getattr(args, k) for k in ("quick", "steps", "batch_size", "length", "held_out", "learning_rate")}
    child = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items() if k != "quick"] + ["--scratch", args.scratch]
    child += ["--quick"] if args.quick else []
    for adapter in args.adapters:
        for base in args.bases:
            command = [sys.executable, os.path.abspath(__file__), *child, "--one", base, adapter]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{base} / {adapter} failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{adapter} on {base}: peak {rows[-1]['peak_rss_mb']:.0f} MB, "
                  f"step {rows[-1]['train_step_s']:.3f} s", flush=True)
    result = {"model": "tiny-llama" if args.quick else "SmolLM2-135M", "settings": settings,
              "torch_threads": torch.get_num_threads(), "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1)
    print(table(rows))


if __name__ == "__main__":
    main()
