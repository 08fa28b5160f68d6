"""The documentation site: `mkdocs build --strict` passes (a broken link, anchor or API reference fails it), and the
code on its pages runs: every block of the quick tour in order, and every block elsewhere marked `# runs as is`."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MARK = "# runs as is"


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


def build(root: Path, site: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=root,
                          capture_output=True, text=True, env=env, timeout=600)


def test_the_site_builds_strictly(tmp_path):
    result = build(ROOT, tmp_path / "site")
    assert result.returncode == 0, result.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert 'id="peft_bottleneck.BottleneckConfig.reduction_factor"' in api  # the reference is generated
    assert "Bottleneck size = hidden size // reduction_factor" in api     # with the fields' help text
    assert (tmp_path / "site" / "results" / "fusion_minilm.png").is_file()  # the benchmark plots are served


@pytest.mark.parametrize("breakage", ["link", "api"])
def test_a_broken_link_or_reference_fails_the_build(tmp_path, breakage):
    copy = tmp_path / "copy"
    shutil.copytree(DOCS, copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy)
    shutil.copytree(ROOT / "peft_bottleneck", copy / "peft_bottleneck")
    (copy / "benchmarks").mkdir()
    shutil.copytree(ROOT / "benchmarks" / "results", copy / "benchmarks" / "results")
    page = copy / "docs" / "serving.md"
    broken = "[gone](no-such-page.md)" if breakage == "link" else "::: peft_bottleneck.NoSuchThing"
    page.write_text(page.read_text() + f"\n\n{broken}\n")
    result = build(copy, tmp_path / "site")
    assert result.returncode != 0
    assert ("no-such-page.md" if breakage == "link" else "NoSuchThing") in result.stderr


def test_the_quick_tour_runs_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks(DOCS / "quick-tour.md")
    assert len(blocks) >= 4
    namespace = {"__name__": "quick_tour"}
    for block in blocks:
        exec(compile(block, str(DOCS / "quick-tour.md"), "exec"), namespace)
    assert (tmp_path / "tour-adapter" / "adapter_model.safetensors").is_file()


MARKED = [(page, block) for page in sorted(DOCS.rglob("*.md")) for block in python_blocks(page)
          if block.startswith(MARK)]


def test_pages_have_runnable_examples():
    assert len(MARKED) >= 3


@pytest.mark.parametrize("page,source", MARKED, ids=[f"{p.relative_to(DOCS)}-{i}" for i, (p, _) in enumerate(MARKED)])
def test_marked_example_runs(page, source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(source, str(page), "exec"), {"__name__": "docs_example"})
