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


@pytest.mark.parametrize("model", ["bert-base", "smollm2"])
def test_speed_quick(model, tmp_path):
    out = run("speed.py", "--quick", "--model", model, "--rounds", "1", "--output", str(tmp_path / "s.json"),
              cwd=tmp_path)
    saved = json.loads((tmp_path / "s.json").read_text())
    assert set(saved["ours"]) >= {"base", "houlsby", "compacter"} and saved["ours"]["houlsby"]["peak_rss_mb"] > 0
    assert "| houlsby |" in out


@needs_bundles
def test_accuracy_quick_resumes(tmp_path):
    args = ["--quick", "--tasks", "topic", "--methods", "houlsby", "head-only", "--seeds", "0", "1", "--epochs", "1",
            "--output", str(tmp_path / "a.json"), "--scratch-dir", str(tmp_path / "scratch")]
    run("accuracy.py", *args, cwd=tmp_path)
    first = json.loads((tmp_path / "a.json").read_text())["runs"]
    for method in ("houlsby", "head-only"):
        seeds = [run["seed"] for run in first if run["method"] == method]
        assert seeds.count(1) == 1 and seeds.count(0) in (2, 3)  # the grid (+1 beyond an edge), then seed 1
    assert (tmp_path / "a.png").exists() and "| Houlsby |" in (tmp_path / "a.md").read_text()
    run("accuracy.py", *args, cwd=tmp_path)  # everything is done: nothing is trained again
    assert json.loads((tmp_path / "a.json").read_text())["runs"] == first
