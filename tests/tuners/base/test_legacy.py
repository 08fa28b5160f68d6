"""Adapters saved by peft-bottleneck 0.1.0 (before the adapter core was restructured) still load and compute the
same outputs. The fixtures are written by ``tests/fixtures/make_legacy.py`` from that version; never regenerate
them with the current code."""

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from peft import PeftModel
from safetensors.torch import load_file

import peft_bottleneck as pb

LEGACY = Path(__file__).parents[2] / "fixtures" / "legacy"
CASES = sorted(p.name for p in LEGACY.iterdir() if p.is_dir())


def load_case(name):
    case = LEGACY / name
    spec = json.loads((case / "case.json").read_text())
    base = tiny_model(spec["model_type"], seed=spec["base_seed"])
    base.load_state_dict(load_file(case / "base.safetensors"))
    if "prune_keep" in spec:
        pb.prune_layers(base, keep=spec["prune_keep"])
    expected = load_file(case / "expected.safetensors")
    inputs = {k.removeprefix("input."): v for k, v in expected.items() if k.startswith("input.")}
    kwargs = {"task": spec["task"]} if "task" in spec else {}
    return base, case / "adapter", inputs, kwargs, expected["logits"]


def test_every_tuner_type_has_a_case():
    assert len(CASES) >= 10
    types = {json.loads((LEGACY / c / "adapter" / "adapter_config.json").read_text())["peft_type"] for c in CASES}
    assert types == {"BOTTLENECK", "PARALLEL_ADAPTER", "COMPACTER", "OUTPUT_ADAPTER", "ADAPTER_CONTROLLER"}


@pytest.mark.parametrize("name", CASES)
def test_legacy_adapter_loads_and_gives_the_same_outputs(name):
    base, adapter, inputs, kwargs, expected = load_case(name)
    model = PeftModel.from_pretrained(base, adapter).eval()
    with torch.no_grad():
        logits = model(**inputs, **kwargs).logits
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_legacy_pruned_adapter_still_refuses_an_unpruned_base():
    spec = json.loads((LEGACY / "bert_pruned_houlsby" / "case.json").read_text())
    base = tiny_model(spec["model_type"], seed=spec["base_seed"])
    with pytest.raises(ValueError, match="layer map"):
        PeftModel.from_pretrained(base, LEGACY / "bert_pruned_houlsby" / "adapter")
