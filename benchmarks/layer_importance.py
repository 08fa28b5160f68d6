"""Which layers can go? Every importance method against simple rules, all random drop-sets and the oracle.

    python benchmarks/layer_importance.py --seeds 0 1 2      # MiniLM-L6 + Houlsby adapter on bundled sentiment
    python benchmarks/layer_importance.py --seeds 0 --train-samples 128 --validation-samples 64 --heal-steps 2 \
        --max-test-samples 64 --epochs 1                     # smoke run

Per seed: fine-tune MiniLM-L6 with a Houlsby adapter on the Rotten Tomatoes sentences while
LayerImportanceCallback scores the 6 layers (all training-time methods, plus ablation on 4 validation batches).
Then, for k = 1, 2, 3 layers dropped, evaluate every one of the C(6, k) drop-sets without healing on a validation
subset and on the test split: each method's choice, dropping from the top, from the bottom, alternate layers, the
distribution over all drop-sets, and the oracle (best on validation, reported on test). At every k, every method's
drop-set and the oracle's are healed with the same budget of extra steps, against the unpruned model given the same
steps. Also: Spearman rank correlation of each method's ordering with one-shot ablation, training time with and
without the callback, and the measured speed-up and parameter ratio of each pruned size.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from peft import get_peft_model  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from peft_bottleneck import BottleneckConfig, LayerImportanceCallback, compression_plan, prune_layers  # noqa: E402
from peft_bottleneck.bundled import minilm_path, sentiment_splits  # noqa: E402
from peft_bottleneck.compression import least_important
from peft_bottleneck.compression.importance import default_prune_method  # noqa: E402

LAYERS = 6


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def training_args(args, seed, name, **kw):
    return TrainingArguments(output_dir=os.path.join(args.output_dir, name), per_device_train_batch_size=32,
                             per_device_eval_batch_size=256, learning_rate=args.learning_rate, warmup_steps=0.1,
                             num_train_epochs=args.epochs, save_strategy="no", report_to=[], seed=seed,
                             logging_steps=50, disable_tqdm=True, **kw)


def accuracy(model, dataset, collator) -> float:
    trainer = Trainer(model=model, args=TrainingArguments(output_dir="/tmp/eval", per_device_eval_batch_size=256,
                                                          report_to=[], disable_tqdm=True),
                      data_collator=collator)
    out = trainer.predict(dataset)
    return float(np.mean(np.argmax(out.predictions, -1) == out.label_ids))


def fine_tune(args, seed, data, collator, with_callback=True):
    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2),
                           BottleneckConfig(task_type="SEQ_CLS"))
    calibration = [collator([data["validation"][i] for i in range(j * 32, (j + 1) * 32)]) for j in range(4)]
    callback = LayerImportanceCallback(calibration_batches=calibration,
                                       output_dir=os.path.join(args.output_dir, f"seed{seed}"))
    trainer = Trainer(model=model, args=training_args(args, seed, f"train{seed}"), train_dataset=data["train"],
                      data_collator=collator, callbacks=[callback] if with_callback else None)
    start = time.perf_counter()
    trainer.train()
    return model, callback.result, time.perf_counter() - start


def heal_and_score(model, args, seed, data, collator, steps):
    trainer = Trainer(model=model, args=training_args(args, seed, "heal", max_steps=steps),
                      train_dataset=data["train"].shuffle(seed=seed + 100), data_collator=collator)
    trainer.train()
    return accuracy(model, data["test"], collator)


def heal_every_choice(model, per_k, args, seed, data, collator) -> dict:
    """Test accuracy after the same healing budget for every method's drop-set and the oracle's, at every k, and
    for the unpruned model given the same steps. Each distinct drop-set is healed once (methods often agree)."""
    by_set = {}
    healed = {"unpruned": heal_and_score(copy.deepcopy(model), args, seed, data, collator, args.heal_steps)}
    for k, entry in per_k.items():
        named = {name: choice["dropped"] for name, choice in entry["choices"].items()}
        named["oracle"] = entry["oracle"]["dropped"]
        for name, drop in named.items():
            key = tuple(sorted(drop))
            if key not in by_set:
                pruned = prune_layers(copy.deepcopy(model), drop=list(key))
                by_set[key] = heal_and_score(pruned, args, seed, data, collator, args.heal_steps)
            healed.setdefault(str(k), {})[name] = by_set[key]
    return healed


def run_seed(args, seed, tokenizer, splits, collator):
    data = {
        "train": splits["train"].shuffle(seed=seed).select(range(args.train_samples)),
        "validation": splits["validation"].select(range(args.validation_samples)),
        "test": splits["test"].select(range(min(args.max_test_samples or len(splits["test"]), len(splits["test"])))),
    }
    model, result, train_seconds = fine_tune(args, seed, data, collator)
    scores = dict(result["scores"])
    greedy = [step["layer"] for step in result["ablation_order"]]
    model.eval()
    full = {"validation": accuracy(model, data["validation"], collator), "test": accuracy(model, data["test"], collator)}

    by_set = {}
    for k in args.drop:
        for drop in itertools.combinations(range(LAYERS), k):
            pruned = prune_layers(copy.deepcopy(model), drop=list(drop))
            by_set[drop] = {name: accuracy(pruned, data[name], collator) for name in ("validation", "test")}

    rules = {"top": lambda k: list(range(LAYERS - k, LAYERS)), "bottom": lambda k: list(range(k)),
             "alternate": lambda k: sorted([5, 3, 1][:k])}  # greedy ablation comes with the scores
    per_k = {}
    for k in args.drop:
        sets = {d: v for d, v in by_set.items() if len(d) == k}
        tests = [v["test"] for v in sets.values()]
        oracle = max(sets, key=lambda d: sets[d]["validation"])
        choices = {method: least_important(values, k) for method, values in scores.items()}
        choices.update({name: rule(k) for name, rule in rules.items()})
        per_k[k] = {
            "choices": {name: {"dropped": d, **sets[tuple(d)]} for name, d in choices.items()},
            "oracle": {"dropped": list(oracle), "test": sets[oracle]["test"]},
            "random": {"mean": statistics.mean(tests), "std": statistics.pstdev(tests), "min": min(tests),
                       "max": max(tests), "sets": len(tests)},
        }

    healed = heal_every_choice(model, per_k, args, seed, data, collator) if args.heal_steps else {}

    correlation = {m: spearman(v, scores["ablation"]) for m, v in scores.items() if m != "ablation"}
    batch = {k: v for k, v in collator([data["test"][i] for i in range(32)]).items() if k != "labels"}
    plan = compression_plan(model, scores[default_prune_method(calibrated=True)], targets=args.drop, batch=batch)
    return {"seed": seed, "scores": scores, "ablation_order": greedy, "full": full, "per_k": per_k,
            "healed": healed, "spearman_vs_ablation": correlation, "plan": plan,
            "train_seconds_with_callback": train_seconds, "calibration_seconds": result.get("calibration_seconds"),
            "all_sets": {",".join(map(str, d)): v for d, v in by_set.items()}}


def summarize(runs, args):
    lines = [f"MiniLM-L6 + Houlsby, {args.train_samples} training sentences, {args.epochs} epochs, seeds "
             f"{[r['seed'] for r in runs]}; test accuracy, mean over seeds (unpruned: "
             f"{statistics.mean(r['full']['test'] for r in runs):.4f})", ""]
    names = list(runs[0]["per_k"][args.drop[0]]["choices"])
    header = "| k dropped | " + " | ".join(names) + " | random mean (min-max) | oracle (val-chosen) |"
    lines += [header, "|" + "---|" * (len(names) + 3)]
    for k in args.drop:
        cells = [statistics.mean(r["per_k"][k]["choices"][n]["test"] for r in runs) for n in names]
        rand = [r["per_k"][k]["random"] for r in runs]
        oracle = statistics.mean(r["per_k"][k]["oracle"]["test"] for r in runs)
        lines.append(f"| {k} | " + " | ".join(f"{c:.4f}" for c in cells) +
                     f" | {statistics.mean(x['mean'] for x in rand):.4f} ({min(x['min'] for x in rand):.4f}-"
                     f"{max(x['max'] for x in rand):.4f}) | {oracle:.4f} |")
    validation = {n: statistics.mean(r["all_sets"][",".join(map(str, r["per_k"][2]["choices"][n]["dropped"]))]
                                     ["validation"] for r in runs) for n in names} if 2 in args.drop else {}
    if validation:
        lines += ["", "k = 2, validation accuracy of each method's drop-set (the rule for picking a default): " +
                  ", ".join(f"{n} {v:.4f}" for n, v in sorted(validation.items(), key=lambda kv: -kv[1]))]
    lines += ["", "Spearman correlation with one-shot ablation (mean over seeds): " + ", ".join(
        f"{m} {statistics.mean(r['spearman_vs_ablation'][m] for r in runs):+.2f}"
        for m in runs[0]["spearman_vs_ablation"])]
    if runs[0].get("healed"):
        lines += ["", f"Healed with {args.heal_steps} extra steps (fresh optimizer), test accuracy, mean over seeds; the "
                  "unpruned model given the same steps: "
                  f"{statistics.mean(r['healed']['unpruned'] for r in runs):.4f}", "",
                  "| k dropped | " + " | ".join(names) + " | oracle |", "|" + "---|" * (len(names) + 2)]
        for k in args.drop:
            cells = [statistics.mean(r["healed"][str(k)][n] for r in runs) for n in names + ["oracle"]]
            lines.append(f"| {k} | " + " | ".join(f"{c:.4f}" for c in cells) + " |")
        lines.append("")
    elif runs[0].get("healed_k2"):  # results saved before every method was healed
        lines.append("Healed, k = 2 (" + str(args.heal_steps) + " extra steps): " + ", ".join(
            f"{name} {statistics.mean(r['healed_k2'][name] for r in runs):.4f}" for name in runs[0]["healed_k2"]))
    lines.append("Pruned sizes (default method, seed " + str(runs[0]["seed"]) + "): " + "; ".join(
        f"k={len(p['dropped'])}: speed-up {p['speedup']:.2f}x, parameters {p['parameter_ratio']:.3f}, layers "
        f"{p['layer_ratio']:.3f}" for p in runs[0]["plan"]))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--drop", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--train-samples", type=int, default=3000)
    parser.add_argument("--validation-samples", type=int, default=500)
    parser.add_argument("--max-test-samples", type=int, default=None, help="cap the test split (smoke runs)")
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--heal-steps", type=int, default=60)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--overhead-check", action="store_true", help="also train once without the callback")
    parser.add_argument("--output-dir", default="outputs/layer_importance")
    parser.add_argument("--output", default=None)
    parser.add_argument("--summarize", default=None, help="print the summary of a saved --output JSON and exit")
    args = parser.parse_args(argv)
    if args.summarize:
        with open(args.summarize) as f:
            saved = json.load(f)
        for run in saved["runs"]:  # JSON turned the integer keys into strings
            run["per_k"] = {int(k): v for k, v in run["per_k"].items()}
        print(summarize(saved["runs"], argparse.Namespace(**saved["args"])))
        return

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    splits = sentiment_splits().map(lambda b: tokenizer(b["text"], truncation=True, max_length=args.max_length),
                                    batched=True, remove_columns=["text"])
    collator = DataCollatorWithPadding(tokenizer)
    runs = []
    for seed in args.seeds:
        runs.append(run_seed(args, seed, tokenizer, splits, collator))
        if args.output:  # keep what is done if a later seed is interrupted
            with open(args.output, "w") as f:
                json.dump({"args": vars(args), "runs": runs}, f, indent=2)
    overhead = None
    if args.overhead_check:
        data = {"train": splits["train"].shuffle(seed=0).select(range(args.train_samples)),
                "validation": splits["validation"].select(range(args.validation_samples))}
        _, _, plain_seconds = fine_tune(args, 0, data, collator, with_callback=False)
        overhead = runs[0]["train_seconds_with_callback"] / plain_seconds
    report = summarize(runs, args)
    if overhead is not None:
        report += f"\nTraining time with the callback (incl. end-of-training ablation) / without: {overhead:.3f}"
    print("\n" + report)
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"args": vars(args), "runs": runs, "overhead": overhead, "report": report}, f, indent=2)


if __name__ == "__main__":
    main()
