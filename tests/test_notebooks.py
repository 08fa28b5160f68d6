"""Every notebook runs top to bottom (its committed cells, outputs stripped) in quick mode (PEFT_BOTTLENECK_QUICK=1
shrinks the data; `python notebooks/build.py` makes the committed full-size outputs), and shows what it claims."""

import os
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# what each notebook must print, whatever the (quick) numbers
CLAIMS = {
    "quickstart.ipynb": ["identical: True", "trainable params", "test accuracy after one short epoch"],
    "multitask_controller.ipynb": ["names == indices: True", "reloaded identical: True",
                                   "after add_task, old tasks identical: True", "Unknown task(s) ['qa']"],
    "composition_fusion.ipynb": ["topic adapter frozen while the stack trains: True", "topic adapter unchanged: True",
                                 "Fuse(sentiment, topic) on sentiment:", "reloaded identical: True"],
    "layer_importance.ipynb": ["default pruning score: ablation_greedy", "reloaded accuracy", "unpruned base:",
                               "adapters dropped in the lowest 3 layers"],
}


def text_of(notebook) -> str:
    return "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                     for c in notebook.cells if c.cell_type == "code" for o in c.outputs)


@pytest.mark.parametrize("name", sorted(CLAIMS))
def test_notebook_executes_and_shows_its_claims(name, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    committed = nbformat.read(NOTEBOOKS / name, as_version=4)
    for claim in CLAIMS[name]:
        assert claim in text_of(committed), f"committed outputs lack {claim!r}"
    for forbidden in ("/root/", "site-packages", "\x1b[A", "Traceback"):
        assert forbidden not in text_of(committed), forbidden
    for cell in committed.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    monkeypatch.setenv("PEFT_BOTTLENECK_QUICK", "1")
    NotebookClient(committed, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in committed.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    for claim in CLAIMS[name]:
        assert claim in text_of(committed), f"quick run lacks {claim!r}"


def test_every_notebook_is_tested():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(CLAIMS)
