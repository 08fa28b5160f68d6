"""Before / after a change: forward and train-step cost of every adapter kind, this tree against a git revision.

    python benchmarks/before_after.py --ref 396fcf9              # bert-base shape, 2 pairs of runs
    python benchmarks/before_after.py --ref HEAD~1 --quick       # a small shape, to check the script

The revision is checked out in a temporary git worktree; `benchmarks/speed.py` of each tree runs with that tree's
package first on the import path, alternately (before, after, before, after, ...) so drifts of the machine hit both.
Each run's figures are ratios to the base model of the same run (interleaved rounds, see speed.py), so the table
compares ratios, not seconds taken minutes apart. Peak memory is not probed here (speed.py does that).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def run_speed(tree: Path, args, output: Path) -> dict:
    command = [sys.executable, str(tree / "benchmarks" / "speed.py"), "--model", args.model, "--rounds",
               str(args.rounds), "--memory-variants", "--output", str(output)]
    if args.quick:
        command.append("--quick")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, cwd=tree, env=environment, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"speed.py in {tree} failed:\n{done.stderr[-3000:]}")
    figures = json.loads(output.read_text())["ours"]
    base = figures["base"]
    return {name: {"forward": f["forward_s"] / base["forward_s"], "train_step": f["train_step_s"] / base["train_step_s"]}
            for name, f in figures.items() if name != "base"}


def table(before: list[dict], after: list[dict], ref: str) -> str:
    lines = [f"| kind | forward / base, {ref} | forward / base, this tree | train step / base, {ref} | "
             "train step / base, this tree |", "|---|---|---|---|---|"]

    def cell(runs, name, what):
        values = [r[name][what] for r in runs if name in r]
        if not values:
            return "-"
        median = statistics.median(values)
        return f"{median:.3f}" if len(values) == 1 else f"{median:.3f} ({min(values):.3f}-{max(values):.3f})"

    for name in dict.fromkeys([*after[0], *before[0]]):
        lines.append(f"| {name} | {cell(before, name, 'forward')} | {cell(after, name, 'forward')} | "
                     f"{cell(before, name, 'train_step')} | {cell(after, name, 'train_step')} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", default="396fcf9", help="the git revision to compare with")
    parser.add_argument("--pairs", type=int, default=2, help="before / after runs, alternated")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per speed.py run")
    parser.add_argument("--model", default="bert-base")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="before-after-") as scratch:
        old_tree = Path(scratch) / "tree"
        subprocess.run(["git", "-C", str(HERE), "worktree", "add", "--detach", "--quiet", str(old_tree), args.ref],
                       check=True)
        try:
            before, after = [], []
            for pair in range(args.pairs):
                before.append(run_speed(old_tree, args, Path(scratch) / f"before-{pair}.json"))
                after.append(run_speed(HERE, args, Path(scratch) / f"after-{pair}.json"))
                print(json.dumps({"pair": pair, "before": before[-1], "after": after[-1]}), file=sys.stderr,
                      flush=True)
        finally:
            subprocess.run(["git", "-C", str(HERE), "worktree", "remove", "--force", str(old_tree)], check=False)
    text = table(before, after, args.ref)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"settings": vars(args), "before": before, "after": after, "table": text}, f, indent=1)


if __name__ == "__main__":
    main()
