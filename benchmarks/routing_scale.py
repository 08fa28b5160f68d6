"""Mixed-adapter batches at scale: hundreds of adapters loaded, dozens of them in one batch.

    python benchmarks/routing_scale.py                 # bert-base shape, batch 64 x length 64, L up to 512
    python benchmarks/routing_scale.py --quick         # a tiny shape, to check the script

For our Houlsby adapters (reduction factor 16) and PEFT LoRA with about the same parameters per adapter (r = 48 on
query and value), each in its own process: adapters are added one by one up to each L in --loaded; at every L the
forward of a batch whose examples use D distinct adapters (``adapter_names``, D in --distinct, D <= L) is timed
against the base model's forward side by side, round by round (which goes first alternates; a run's ratio is the
median over its rounds of adapter time / base time in the same round; --repeats such runs), and the
resident memory (Linux RSS) is taken against the process before any adapter was added. The time of each ``add_adapter`` is kept, so
the cost of the first and of the last additions can be compared.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import _status_kib, bert_base_config_kwargs, paired_ratios, timed_rounds  # noqa: E402

VARIANTS = ("ours", "lora")


def build(variant: str, quick: bool):
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertModel

    import peft_bottleneck  # noqa: F401

    torch.manual_seed(0)
    base = BertModel(BertConfig(**bert_base_config_kwargs(quick)), add_pooling_layer=False).eval()
    if variant == "ours":
        make = lambda: peft_bottleneck.BottleneckConfig()  # noqa: E731  (defaults: as a user adds them)
    else:
        rank = 8 if quick else 48
        make = lambda: LoraConfig(r=rank, target_modules=["query", "value"])  # noqa: E731
    return base, make, get_peft_model


def timed_forward(model, batch, adapter_names=None) -> float:
    kwargs = {} if adapter_names is None else {"adapter_names": adapter_names}
    with torch.inference_mode():
        start = time.perf_counter()
        model(**batch, **kwargs)
        return time.perf_counter() - start


def run_variant(args) -> dict:
    torch.set_num_threads(args.threads)
    base, make, get_peft_model = build(args.variant, args.quick)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, base.config.vocab_size, (args.batch_size, args.length), generator=generator)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    timed_forward(base, batch)  # warm-up
    rss_base = _status_kib("VmRSS") / 1024
    model = get_peft_model(copy.deepcopy(base), make(), adapter_name="a0").eval()
    add_seconds = []
    rows = []
    for loaded in sorted(args.loaded):
        while len(model.peft_config) < loaded:
            name = f"a{len(model.peft_config)}"
            start = time.perf_counter()
            model.add_adapter(name, make())
            add_seconds.append(time.perf_counter() - start)
        model.eval()
        for distinct in sorted(d for d in args.distinct if d <= loaded):
            names = [f"a{i % distinct}" for i in range(args.batch_size)]
            first = timed_forward(model, batch, names)  # includes refreshing our route table after the adds
            runs = []
            for _ in range(args.repeats):  # independent runs, each the median of its rounds' paired ratios
                times = timed_rounds({"base": lambda: timed_forward(base, batch),
                                      "adapters": lambda: timed_forward(model, batch, names)}, args.rounds)
                base_s, adapter_s = statistics.median(times["base"]), statistics.median(times["adapters"])
                runs.append({"base_s": base_s, "adapter_s": adapter_s, "ratio_of_medians": adapter_s / base_s,
                             "ratio": statistics.median(paired_ratios(times, "adapters", "base"))})
            ratios = [run["ratio"] for run in runs]
            rows.append({
                "loaded": loaded, "distinct": distinct,
                "base_s": statistics.median(r["base_s"] for r in runs),
                "adapter_s": statistics.median(r["adapter_s"] for r in runs),
                "ratio": statistics.median(ratios), "ratios": ratios,
                "ratios_of_medians": [r["ratio_of_medians"] for r in runs],
                "first_call_s": first,
                "rss_mb": _status_kib("VmRSS") / 1024, "rss_base_mb": rss_base,
            })
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    trainable_per_adapter = sum(p.numel() for n, p in model.named_parameters() if ".a0" in n or n.endswith("a0"))
    return {"rows": rows, "add_seconds": add_seconds, "parameters_per_adapter": trainable_per_adapter}


def summarize(results: dict) -> str:
    lines = ["| adapters loaded L | distinct in batch D | ours: forward / base | LoRA: forward / base | "
             "ours: RSS / base | LoRA: RSS / base |", "|---|---|---|---|---|---|"]
    keyed = {v: {(r["loaded"], r["distinct"]): r for r in results[v]["rows"]} for v in results}
    for key in sorted(keyed.get("ours", {}) or keyed.get("lora", {})):
        cells = []
        for field in ("ratio", "rss"):
            for variant in VARIANTS:
                row = keyed.get(variant, {}).get(key)
                if row is None:
                    cells.append("-")
                elif field == "ratio":
                    ratios = row.get("ratios", [row["ratio"]])
                    cells.append(f"{row['ratio']:.3f}" if len(ratios) == 1 else
                                 f"{row['ratio']:.3f} ({min(ratios):.3f}-{max(ratios):.3f}, {len(ratios)} runs)")
                else:
                    cells.append(f"{row['rss_mb'] / row['rss_base_mb']:.2f}")
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
    for variant in results:
        adds = results[variant]["add_seconds"]
        if adds:
            head, tail = adds[: min(8, len(adds))], adds[-min(8, len(adds)):]
            lines.append(f"\n{variant}: {len(adds) + 1} adapters added in {sum(adds):.1f} s; mean of the first "
                         f"{len(head)} additions {1000 * statistics.mean(head):.1f} ms, of the last {len(tail)} "
                         f"{1000 * statistics.mean(tail):.1f} ms; {results[variant]['parameters_per_adapter']:,} "
                         "parameters per adapter")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loaded", type=int, nargs="+", default=[1, 8, 64, 512])
    parser.add_argument("--distinct", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1,
                        help="independent runs per (L, D), each the median of --rounds; the table gives their median "
                        "and range")
    parser.add_argument("--threads", type=int, default=max(1, torch.get_num_threads()))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", default=None)
    parser.add_argument("--variant", choices=VARIANTS, default=None, help=argparse.SUPPRESS)  # internal: one process
    args = parser.parse_args(argv)
    if args.quick and argv is None and "--loaded" not in sys.argv:
        args.loaded, args.distinct, args.batch_size, args.length = [1, 4, 16], [1, 4], 8, 16
    if args.variant is not None:
        print(json.dumps(run_variant(args)))
        return

    results = {}
    for variant in args.variants:
        command = [sys.executable, os.path.abspath(__file__), "--variant", variant, "--loaded", *map(str, args.loaded),
                   "--distinct", *map(str, args.distinct), "--batch-size", str(args.batch_size), "--length",
                   str(args.length), "--rounds", str(args.rounds), "--repeats", str(args.repeats), "--threads",
                   str(args.threads)]
        if args.quick:
            command.append("--quick")
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{variant} failed:\n{done.stderr[-3000:]}")
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    table = summarize(results)
    print(table)
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"settings": {k: v for k, v in vars(args).items() if k != "variant"}, "results": results,
                       "table": table}, f, indent=1)


if __name__ == "__main__":
    main()
