"""Serving several adapters from one model: what routing costs, and what several threads calling one model get.

    python benchmarks/serving.py             # bert-base shape (12 x 768, random weights)
    python benchmarks/serving.py --quick     # a small shape, to check the script

Part 1, the cost of routing (batch 8 x 128): the base model, one Houlsby adapter made active, the same adapter named
for every example (``adapter_names=["a"] * 8``, which must cost what the active adapter costs: no gather) and a batch
mixing two adapters and the base; each once per round, in an order that rotates from round to round. A variant's
ratio is the median over rounds of its time over the base's in the same round (the machine drifts between rounds;
side by side it cancels), with a 95% interval for that median; the ratio of the medians is kept as well.

Part 2, threads (batch 4 x 64): one model holding two adapters, ours (Houlsby) or PEFT LoRA (r = 48 on query and
value, about the same parameters), called from 1, 2 and 4 threads at once, each thread with its own
``adapter_names`` mix; every output is compared with the same call made alone (correctness: the share of calls
that got their own route) and the calls per second of all threads together are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import (bert_base_config_kwargs, median_interval, paired_ratios, random_batch,  # noqa: E402
                    timed_rounds)

RESULTS = Path(__file__).resolve().parent / "results" / "serving.json"
MIXES = [["a", "b", "__base__", "a"], ["b", "b", "a", "__base__"], ["__base__", "a", "b", "b"], ["a", "a", "a", "b"]]


def bert(quick: bool):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(**bert_base_config_kwargs(quick)), add_pooling_layer=False).eval()


def with_adapters(variant: str, quick: bool):
    from peft import LoraConfig, get_peft_model

    import peft_bottleneck

    torch.manual_seed(0)
    if variant == "ours":
        make = lambda: peft_bottleneck.BottleneckConfig(init_weights=False)  # noqa: E731
    else:
        make = lambda: LoraConfig(r=8 if quick else 48, target_modules=["query", "value"],  # noqa: E731
                                  init_lora_weights=False)
    model = get_peft_model(bert(quick), make(), adapter_name="a")
    model.add_adapter("b", make())
    return model.eval()


def forward(model, batch, **route) -> torch.Tensor:
    with torch.inference_mode():
        return model(**batch, **route).last_hidden_state


def routing_cost(args) -> dict:
    model = with_adapters("ours", args.quick)
    model.set_adapter("a")
    base_model = bert(args.quick)  # the same weights, without any adapter layer
    batch = random_batch(model.config.vocab_size, 8, 32 if args.quick else 128)
    size = batch["input_ids"].shape[0]
    variants = {
        "base": lambda: forward(base_model, batch),
        "houlsby active": lambda: forward(model, batch),
        "houlsby by adapter_names (one name)": lambda: forward(model, batch, adapter_names=["a"] * size),
        "mixed: a, b and the base": lambda: forward(model, batch, adapter_names=(["a", "b", "__base__"] * size)[
            :size]),
    }
    for run in variants.values():
        run()  # warm-up
    times = timed_rounds(variants, args.rounds)
    base = statistics.median(times["base"])
    out = {}
    for name, values in times.items():
        ratios = paired_ratios(times, name, "base")
        out[name] = {"median_s": statistics.median(values), "ratio_to_base": statistics.median(ratios),
                     "ratio_interval_95": median_interval(ratios),
                     "ratio_of_medians": statistics.median(values) / base, "seconds": values}
    return out


def threads(args) -> dict:
    out = {}
    for variant in ("ours", "lora"):
        model = with_adapters(variant, args.quick)
        batch = random_batch(model.config.vocab_size, 4, 16 if args.quick else 64)
        alone = [forward(model, batch, adapter_names=mix) for mix in MIXES]
        for count in (1, 2, 4):
            right, calls = [0], args.calls
            barrier = threading.Barrier(count)

            def work(index):
                barrier.wait()
                for call in range(calls):
                    mix = (index + call) % len(MIXES)
                    if torch.equal(forward(model, batch, adapter_names=MIXES[mix]), alone[mix]):
                        right[0] += 1

            pool = [threading.Thread(target=work, args=(i,)) for i in range(count)]
            start = time.perf_counter()
            for thread in pool:
                thread.start()
            for thread in pool:
                thread.join()
            elapsed = time.perf_counter() - start
            out[f"{variant}, {count} threads"] = {"calls": count * calls, "correct": right[0] / (count * calls),
                                                  "calls_per_s": count * calls / elapsed}
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--calls", type=int, default=20, help="calls per thread in part 2")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    result = {"date": time.strftime("%Y-%m-%d"), "shape": "quick" if args.quick else "bert-base",
              "torch_threads": torch.get_num_threads(), "routing_cost": routing_cost(args), "threads": threads(args)}
    path = Path(args.output) if args.output else (None if args.quick else RESULTS)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"| forward (batch 8, {args.rounds} rounds) | median s | x base (median of rounds) | 95% interval | "
          "ratio of medians |\n|---|---|---|---|---|")
    for name, row in result["routing_cost"].items():
        low, high = row["ratio_interval_95"]
        print(f"| {name} | {row['median_s']:.4f} | {row['ratio_to_base']:.3f} | {low:.3f}-{high:.3f} | "
              f"{row['ratio_of_medians']:.3f} |")
    print("\n| threads | calls | own route | calls / s |\n|---|---|---|---|")
    for name, row in result["threads"].items():
        print(f"| {name} | {row['calls']} | {row['correct']:.0%} | {row['calls_per_s']:.2f} |")


if __name__ == "__main__":
    main()
