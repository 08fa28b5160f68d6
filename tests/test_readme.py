"""The README's examples that claim to run as they are do run (on the bundled MiniLM), in a scratch folder."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARK = "# runs as is"
BLOCKS = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S) if b.startswith(MARK)]


def test_the_readme_has_runnable_examples():
    assert len(BLOCKS) >= 1


@pytest.mark.parametrize("source", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(source, str(README), "exec"), {"__name__": "readme_example"})


def bash_blocks() -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)]


def test_ci_runs_the_readme_test_command():
    ci = (README.parent / ".ci" / "run").read_text().splitlines()
    test_command = [b for b in bash_blocks() if b.endswith("python -m pytest -q")]
    assert len(test_command) == 1 and test_command[0] in ci


def test_the_readme_stays_short_and_names_the_main_job():
    assert len(README.read_bytes()) < 12_000
    assert any(b.endswith("python -m peft_bottleneck.finetune") and b.startswith("pip install torch==2.13.0")
               for b in bash_blocks())
