"""AdapterHub's preset names: every one builds our config with AdapterHub's settings; a model built from a preset
name and given a real AdapterHub adapter's converted weights gives AdapterHub's logits (fixtures of adapters 1.3)."""

from __future__ import annotations

import json

import pytest
import torch
from peft import get_peft_model
from peft.utils import set_peft_model_state_dict
from safetensors.torch import load_file
from test_convert import FIXTURES, base, batch, case

import peft_bottleneck as pb
from peft_bottleneck.convert import convert
from peft_bottleneck.presets import DEPRECATED, PRESETS

FIXTURE_PRESETS = [(c.name, c.name.split("_", 1)[1]) for c in sorted((FIXTURES / "cases").iterdir())
                   if c.name.split("_", 1)[1] in PRESETS]


@pytest.mark.parametrize("name, preset", FIXTURE_PRESETS, ids=[n for n, _ in FIXTURE_PRESETS])
def test_a_preset_name_computes_what_adapterhub_computes(name, preset, tmp_path):
    model_type, expected = case(name)
    inputs, _ = batch(model_type)
    saved = json.loads((FIXTURES / "cases" / name / "adapter" / "adapter_config.json").read_text())["config"]
    extra = {"inv_adapter_reduction_factor": saved["inv_adapter_reduction_factor"]} if "inv" in preset else {}
    config = pb.get_config(preset, reduction_factor=4, **extra)  # no task type: the base's own head, as the fixture
    model = get_peft_model(base(model_type), config).eval()
    convert(FIXTURES / "cases" / name / "adapter", tmp_path, include_head=False)  # the preset: adapter only
    result = set_peft_model_state_dict(model, load_file(tmp_path / "adapter_model.safetensors"))
    assert not [k for k in result.unexpected_keys if "modules_to_save" not in k]
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, expected, rtol=1e-5, atol=1e-5)


def test_every_preset_and_its_old_name():
    assert len(FIXTURE_PRESETS) >= 30
    for old, new in DEPRECATED.items():
        assert pb.get_config(old).to_dict() == pb.get_config(new).to_dict()
    assert pb.get_config("par_bn").scaling == 4.0 and pb.get_config("scaled_par_bn").scaling == "learned"
    assert pb.get_config("double_seq_bn").non_linearity == "swish"
    assert pb.get_config("compacter++").placement == "pfeiffer"
    assert pb.get_config("seq_bn_inv").inv_adapter == "nice"


def test_unknown_presets_and_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="Unknown AdapterHub preset 'seq-bn'.*'seq_bn'"):
        pb.get_config("seq-bn")
    with pytest.raises(ValueError, match="non_linearity"):
        pb.get_config("seq_bn", non_linearity="sparkle")
    with pytest.raises(TypeError):
        pb.get_config("seq_bn", not_a_field=1)
