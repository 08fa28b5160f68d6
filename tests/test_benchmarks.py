"""The benchmark scripts stay runnable: each runs end to end on its smallest setting (figures not checked)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_bundled import needs_bundles

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script, *args, cwd):
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("model, probed", [("bert-base", ["base", "houlsby"]), ("smollm2", [])])
def test_speed_quick(model, probed, tmp_path):
    out = run("speed.py", "--quick", "--model", model, "--rounds", "1", "--output", str(tmp_path / "s.json"),
              "--memory-variants", *probed, cwd=tmp_path)
    saved = json.loads((tmp_path / "s.json").read_text())
    assert set(saved["ours"]) >= {"base", "houlsby", "compacter"}
    assert all(saved["ours"][n]["peak_rss_mb"] > 0 for n in probed)
    assert "| houlsby |" in out


def test_routing_scale_and_composition_speed_quick(tmp_path):
    out = run("routing_scale.py", "--quick", "--variants", "ours", "--repeats", "2", "--output", str(tmp_path / "r.json"),
              cwd=tmp_path)
    assert "| 16 | 4 |" in out and "2 runs)" in out
    assert json.loads((tmp_path / "r.json").read_text())["results"]["ours"]["add_seconds"]
    out = run("segments_vs_gather.py", "--quick", "--output", str(tmp_path / "g.json"), cwd=tmp_path)
    assert "| 8 |" in out and len(json.loads((tmp_path / "g.json").read_text())["results"]) == 2
    out = run("composition_speed.py", "--quick", "--output", str(tmp_path / "c.json"), cwd=tmp_path)
    assert "| fuse4 |" in out and "Stack of 2 adds" in out


@needs_bundles
def test_fusion_quick(tmp_path):
    run("fusion.py", "--quick", "--seeds", "0", "--train-samples", "32", "--eval-samples", "32",
        "--output", str(tmp_path / "f.json"), cwd=tmp_path)
    saved = json.loads((tmp_path / "f.json").read_text())
    assert {"sentiment_alone", "fusion", "average"} <= set(saved["runs"][0]) and (tmp_path / "f.png").exists()


def test_run_store_is_shared_by_processes_and_keeps_protocols_apart(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    import accuracy

    settings = {"epochs": 2, "quick": False, "head_learning_rate": 0.03, "tasks": {"topic": [600, 64]}}
    topic = accuracy.RunStore(tmp_path / "s.json", settings)
    sentiment = accuracy.RunStore(tmp_path / "s.json", {**settings, "tasks": {"sentiment": [1200, 64]}})
    topic.add({"task": "topic", "method": "houlsby", "learning_rate": 3e-3, "seed": 0})
    sentiment.add({"task": "sentiment", "method": "houlsby", "learning_rate": 3e-3, "seed": 0})  # read before it
    sentiment.add({"task": "topic", "method": "houlsby", "learning_rate": 3e-3, "seed": 0})  # done by the other one
    saved = json.loads((tmp_path / "s.json").read_text())
    assert [r["task"] for r in saved["runs"]] == ["topic", "sentiment"]
    assert set(saved["settings"]["tasks"]) == {"topic", "sentiment"}
    old = tmp_path / "old.json"  # a store of the 2026-11 protocol: the head trained at the method's rate
    old.write_text(json.dumps({"settings": {"epochs": 2, "quick": False, "tasks": {"topic": [600, 64]}}, "runs": []}))
    with pytest.raises(ValueError, match="other settings"):
        accuracy.RunStore(old, settings)
    assert accuracy.RunStore(old, {**settings, "head_learning_rate": None}).runs == []


@needs_bundles
def test_accuracy_quick_resumes(tmp_path):
    args = ["--quick", "--tasks", "topic", "--methods", "houlsby", "head-only", "--seeds", "0", "1", "--epochs", "1",
            "--output", str(tmp_path / "a.json"), "--scratch-dir", str(tmp_path / "scratch")]
    run("accuracy.py", *args, cwd=tmp_path)
    first = json.loads((tmp_path / "a.json").read_text())["runs"]
    for method in ("houlsby", "head-only"):
        rates = {seed: sorted(r["learning_rate"] for r in first if r["method"] == method and r["seed"] == seed)
                 for seed in (0, 1)}
        assert rates[0] == rates[1] and len(rates[0]) in (2, 3)  # every grid rate (+1 beyond an edge) with each seed
    assert (tmp_path / "a.png").exists() and "| Houlsby |" in (tmp_path / "a.md").read_text()
    run("accuracy.py", *args, cwd=tmp_path)  # everything is done: nothing is trained again
    assert json.loads((tmp_path / "a.json").read_text())["runs"] == first


def test_controller_speed_quick(tmp_path):
    out = run("controller_speed.py", "--quick", "--rounds", "1", "--output", str(tmp_path / "c.json"), cwd=tmp_path)
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["params_per_task"]["hypernetwork controller, mixed"] == 64  # one task embedding
    assert "| hypernetwork controller, mixed |" in out


@needs_bundles
def test_multitask_smoke(tmp_path):
    out = run("multitask.py", "--seeds", "0", "--losses", "masked", "--controller-adapters", "hyper", "--skip-single",
              "--train-per-task", "16", "--epochs", "1", "--output-dir", str(tmp_path / "o"),
              "--output", str(tmp_path / "m.json"), cwd=tmp_path)
    run_ = json.loads((tmp_path / "m.json").read_text())["runs"][0]["controller"]["hyper, masked loss"]
    assert set(run_["accuracy"]) == {"sentiment", "topic"} and run_["per_added_task"] == 64
    assert "| trainable in all / per added task |" in out


@needs_bundles
def test_quantized_quick(tmp_path):
    pytest.importorskip("bitsandbytes")
    out = run("quantized.py", "--quick", "--steps", "3", "--held-out", "8", "--scratch", str(tmp_path),
              "--output", str(tmp_path / "q.json"), cwd=tmp_path)
    rows = json.loads((tmp_path / "q.json").read_text())["rows"]
    assert {(r["base"], r["adapter"]) for r in rows} == {(b, a) for b in ("fp32", "nf4", "int8")
                                                          for a in ("houlsby", "lora")}
    weights = {(r["base"], r["adapter"]): r["weights_mb"] for r in rows}
    assert weights["nf4", "houlsby"] < weights["int8", "houlsby"] < weights["fp32", "houlsby"]
    assert all(r["peak_rss_mb"] > 0 and r["train_step_s"] > 0 for r in rows) and "| houlsby | nf4 |" in out


@needs_bundles
def test_compacter_recipe_quick_and_its_recipe_is_the_default(tmp_path):
    run("compacter_recipe.py", "--quick", "--rows", "recipe", "adapterhub", "--tasks", "topic", "--seeds", "0",
        "--epochs", "1", "--output-dir", str(tmp_path / "rows"), cwd=tmp_path)
    runs = json.loads((tmp_path / "rows" / "recipe.json").read_text())["runs"]
    assert {r["method"] for r in runs} == {"compacter:recipe"} and len(runs) in (2, 3)
    assert "| recipe |" in (tmp_path / "rows" / "table.md").read_text()
    sys.path.insert(0, str(BENCHMARKS))
    import compacter_recipe

    from peft_bottleneck import CompacterConfig

    for fields, config in ((compacter_recipe.RECIPE, CompacterConfig()),
                           (compacter_recipe.RECIPE_PLUS_PLUS, CompacterConfig(placement="pfeiffer")),
                           (compacter_recipe.ROWS["rank-8"][1], CompacterConfig()),
                           (compacter_recipe.ROWS["adapterhub"][1], CompacterConfig(init_weights="adapterhub"))):
        assert {k: getattr(config, k) for k in fields} == fields


def test_learning_rates_from_the_stored_runs(tmp_path):
    run("learning_rates.py", "--output", str(tmp_path / "lr.json"), cwd=tmp_path)
    chosen = json.loads((tmp_path / "lr.json").read_text())
    assert {"houlsby", "parallel"} <= set(chosen) and (tmp_path / "lr.md").exists()
    assert all(r["met"] in (True, False, None) and r["learning_rate"] > 0 for r in chosen.values())


@pytest.mark.skipif(subprocess.run(["git", "-C", str(BENCHMARKS), "rev-parse", "HEAD"], capture_output=True).returncode
                    != 0, reason="before_after.py compares with a git revision: not a git checkout")
def test_before_after_quick(tmp_path):
    out = run("before_after.py", "--ref", "HEAD", "--quick", "--pairs", "1", "--rounds", "1", cwd=tmp_path)
    assert "| houlsby |" in out and "HEAD" in out
