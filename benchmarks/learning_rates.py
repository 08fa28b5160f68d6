"""The recommended learning rate per adapter kind (peft_bottleneck.learning_rates), chosen and checked from the
accuracy benchmark's runs (benchmarks/accuracy.py: the new head at RECOMMENDED_HEAD_LEARNING_RATE).

    python benchmarks/learning_rates.py                 # the choice and the check, from the stored runs
    python benchmarks/learning_rates.py --run-missing   # first train the topic seeds the check needs and lacks

Choice: the accuracy protocol's choice on the sentiment task (the grid rate with the best mean validation accuracy
over seeds 0-2). Check, on the topic task: the mean validation and test accuracy over seeds 0-2 at that rate against the
same means at the topic task's own choice (its best grid rate); on sentiment the two rates are the same. Target
(issue 18): each kind within 1 point of its best grid rate on both tasks. Writes learning_rates.json and .md to
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import accuracy  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SOURCE = RESULTS / "accuracy_minilm_head_rate.json"
KINDS = ("houlsby", "pfeiffer", "parallel", "compacter", "compacter++", "low-rank")  # methods of accuracy.py
CHOSEN_ON, CHECKED_ON = "sentiment", "topic"
SEEDS = (0, 1, 2)


def chosen_rate(runs, method, task, choose_on: str = "mean") -> float | None:
    """The accuracy protocol's choice (accuracy.chosen_rate)."""
    return accuracy.chosen_rate(runs, method, task, choose_on, SEEDS)


def at_rate(runs, method, task, rate) -> dict:
    mine = [r for r in runs if (r["method"], r["task"], r["learning_rate"]) == (method, task, rate)
            and r["seed"] in SEEDS]
    if not mine:
        return {"seeds": 0}
    return {"seeds": len(mine), "validation": statistics.mean(r["validation_accuracy"] for r in mine),
            "test": statistics.mean(r["test_accuracy"] for r in mine)}


def check_kind(runs, method) -> dict:
    rate = chosen_rate(runs, method, CHOSEN_ON)
    result = {"learning_rate": rate, "method": method}
    for task in (CHOSEN_ON, CHECKED_ON):
        best = chosen_rate(runs, method, task)
        if rate is None or best is None:
            result[task] = {"best_rate": best, "complete": False}
            continue
        mine, ref = at_rate(runs, method, task, rate), at_rate(runs, method, task, best)
        complete = mine["seeds"] == ref["seeds"] == len(SEEDS)
        result[task] = {"best_rate": best, "at_rate": mine, "at_best": ref, "complete": complete}
        if complete:
            result[task]["validation_gap"] = 100 * (mine["validation"] - ref["validation"])
            result[task]["test_gap"] = 100 * (mine["test"] - ref["test"])
    gaps = [result[t].get(k) for t in (CHOSEN_ON, CHECKED_ON) for k in ("validation_gap", "test_gap")]
    result["met"] = None if None in gaps else all(g >= -1.0 for g in gaps)
    return result


def run_missing(store, method: str, tokenizer, data_cache: dict) -> None:
    """Train the checked task's seeds at the chosen rate that the store lacks; they join the benchmark's runs."""
    rate = chosen_rate(store.runs, method, CHOSEN_ON)
    if rate is None or chosen_rate(store.runs, method, CHECKED_ON) is None:
        return  # the benchmark itself has not run this method on both tasks yet
    args = argparse.Namespace(epochs=store.settings["epochs"], scratch_dir="outputs/learning_rates",
                              head_learning_rate=store.settings["head_learning_rate"])
    for seed in SEEDS:
        if store.find(CHECKED_ON, method, rate, seed) is not None:
            continue
        if CHECKED_ON not in data_cache:
            data_cache[CHECKED_ON] = accuracy.load_task(CHECKED_ON, tokenizer, quick=store.settings["quick"])
        run = accuracy.train_once(method, CHECKED_ON, *data_cache[CHECKED_ON], tokenizer, rate, seed, args)
        store.add(run)
        print(f"{method}: {CHECKED_ON} at {rate:g}, seed {seed}: validation {run['validation_accuracy']:.4f}",
              flush=True)


def markdown(results: dict) -> str:
    lines = [f"Rate chosen on {CHOSEN_ON} validation (the accuracy protocol's choice), checked on {CHECKED_ON}: mean "
             f"validation / test accuracy over seeds {list(SEEDS)} at that rate and at the task's own best grid rate; "
             "gaps in points. Target: every gap >= -1.", "",
             f"| kind | rate | {CHECKED_ON} best rate | {CHECKED_ON} val at rate (at best) | "
             f"{CHECKED_ON} test at rate (at best) | {CHECKED_ON} val / test gap | within 1 point |",
             "|---|---|---|---|---|---|---|"]
    for kind, r in results.items():
        t = r[CHECKED_ON]
        if not t.get("complete"):
            lines.append(f"| {kind} | {r['learning_rate'] or '-'} | {t['best_rate'] or '-'} | not run | | | "
                         "unchecked |")
            continue
        met = {True: "met", False: "NOT met", None: "unchecked"}[r["met"]]
        lines.append(f"| {kind} | {r['learning_rate']:g} | {t['best_rate']:g} | {t['at_rate']['validation']:.4f} "
                     f"({t['at_best']['validation']:.4f}) | {t['at_rate']['test']:.4f} ({t['at_best']['test']:.4f}) | "
                     f"{t['validation_gap']:+.1f} / {t['test_gap']:+.1f} | {met} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-missing", action="store_true")
    parser.add_argument("--source", type=Path, default=SOURCE, help="the accuracy benchmark's runs")
    parser.add_argument("--output", type=Path, default=RESULTS / "learning_rates.json")
    args = parser.parse_args(argv)
    accuracy.hf_logging.set_verbosity_error()
    saved = json.loads(args.source.read_text())
    if args.run_missing:
        store = accuracy.RunStore(args.source, saved["settings"])
        tokenizer = accuracy.AutoTokenizer.from_pretrained(accuracy.minilm_path())
        data_cache: dict = {}
        for kind in KINDS:
            run_missing(store, kind, tokenizer, data_cache)
        saved = json.loads(args.source.read_text())
    results = {kind: check_kind(saved["runs"], kind) for kind in KINDS
               if chosen_rate(saved["runs"], kind, CHOSEN_ON) is not None}
    table = markdown(results)
    print(table)
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    args.output.with_suffix(".md").write_text(table + "\n")
    return results


if __name__ == "__main__":
    main()
