"""Mixed batches: gather each example's weights (what the layers do) or group the examples by adapter (segments)?

    python benchmarks/segments_vs_gather.py            # one bert-base adapter position, batch 64 x length 64
    python benchmarks/segments_vs_gather.py --quick    # a small shape, to check the script

One Houlsby adapter position of bert-base's shape (768 -> 48 -> 768, ReLU) with --loaded adapters stacked as the
route table stacks them; a batch whose examples use D distinct adapters (example i uses adapter i mod D). Timed,
median of --rounds after a warm-up, in one process and interleaved:

- gather: each example's weights gathered from the table and one batched matmul per projection (``_linear`` of
  ``peft_bottleneck.tuners.base.layer``, the code the layers run);
- segments: the examples sorted by adapter, one plain matmul per projection and distinct adapter on its contiguous
  slice, then put back in the batch's order (a loop over the D distinct adapters of the batch);
- one adapter: the same arithmetic as a single adapter made active (two plain matmuls over the whole batch), the
  floor both approaches can at best reach.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

from peft_bottleneck.tuners.base.layer import _linear

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import measure_forward  # noqa: E402


def gather(x, table, rows):
    down = _linear(x, table["down_weight"][rows], table["down_bias"][rows], per_example=True)
    return x + _linear(F.relu(down), table["up_weight"][rows], table["up_bias"][rows], per_example=True)


def segments(x, table, adapters):
    order = torch.argsort(adapters, stable=True)
    used, counts = torch.unique_consecutive(adapters[order], return_counts=True)
    parts = []
    for adapter, piece in zip(used.tolist(), x[order].split(counts.tolist())):  # the batch's distinct adapters
        hidden = F.relu(F.linear(piece, table["down_weight"][adapter], table["down_bias"][adapter]))
        parts.append(piece + F.linear(hidden, table["up_weight"][adapter], table["up_bias"][adapter]))
    out = torch.empty_like(x)
    out[order] = torch.cat(parts)
    return out


def one_adapter(x, table, _):
    hidden = F.relu(F.linear(x, table["down_weight"][1], table["down_bias"][1]))
    return x + F.linear(hidden, table["up_weight"][1], table["up_bias"][1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loaded", type=int, default=512)
    parser.add_argument("--distinct", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--bottleneck", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.loaded, args.batch_size, args.length, args.hidden, args.bottleneck, args.rounds = 16, 8, 8, 32, 4, 3
        args.distinct = [d for d in args.distinct if d <= args.batch_size] or [1]

    torch.manual_seed(0)
    rows_total, h, r = args.loaded + 1, args.hidden, args.bottleneck  # row 0: the base route, as in the table
    table = {"down_weight": torch.randn(rows_total, r, h) / h ** 0.5, "down_bias": torch.randn(rows_total, r),
             "up_weight": torch.randn(rows_total, h, r) / r ** 0.5, "up_bias": torch.randn(rows_total, h)}
    x = torch.randn(args.batch_size, args.length, h)
    results = []
    for distinct in args.distinct:
        adapters = torch.arange(args.batch_size) % distinct + 1
        with torch.inference_mode():
            reference = gather(x, table, adapters)
            torch.testing.assert_close(segments(x, table, adapters), reference, rtol=1e-4, atol=1e-4)
        medians = measure_forward({"gather": lambda: gather(x, table, adapters),
                                   "segments": lambda: segments(x, table, adapters),
                                   "one adapter": lambda: one_adapter(x, table, None)}, args.rounds)
        row = {"distinct": distinct, **{f"{name}_ms": 1000 * seconds for name, seconds in medians.items()}}
        results.append(row)
        print(json.dumps(row), flush=True)
    lines = ["| distinct adapters D | gather (ms) | segments (ms) | one adapter (ms) | segments / gather |",
             "|---|---|---|---|---|"]
    for row in results:
        lines.append(f"| {row['distinct']} | {row['gather_ms']:.2f} | {row['segments_ms']:.2f} | "
                     f"{row['one adapter_ms']:.2f} | {row['segments_ms'] / row['gather_ms']:.2f} |")
    table_text = "\n".join(lines)
    print(table_text)
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"settings": vars(args), "results": results, "table": table_text}, f, indent=1)


if __name__ == "__main__":
    main()
