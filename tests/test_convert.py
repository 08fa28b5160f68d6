"""AdapterHub checkpoints (made by the real `adapters` 1.3, see tests/fixtures/make_adapterhub.py) convert and
reproduce AdapterHub's logits."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as tf
from peft import PeftModel
from safetensors.torch import load_file

from peft_bottleneck.convert import ConversionError, convert, from_adapterhub

FIXTURES = Path(__file__).parent / "fixtures" / "adapterhub"
CASES = sorted(p.name for p in (FIXTURES / "cases").iterdir())
REFUSED = {}
AUTO = {"gpt2": tf.AutoModelForCausalLM, "llama": tf.AutoModelForCausalLM}


def base(model_type):
    folder = FIXTURES / "bases" / model_type
    return AUTO.get(model_type, tf.AutoModelForSequenceClassification).from_pretrained(folder).eval()


def batch(model_type):
    expected = load_file(FIXTURES / "bases" / model_type / "expected.safetensors")
    return {k.removeprefix("input."): v for k, v in expected.items() if k.startswith("input.")}, expected["logits"]


def case(name):
    spec = json.loads((FIXTURES / "cases" / name / "case.json").read_text())
    return spec["model_type"], load_file(FIXTURES / "cases" / name / "expected.safetensors")["logits"]


@pytest.mark.parametrize("model_type", sorted(p.name for p in (FIXTURES / "bases").iterdir()))
def test_the_bases_themselves_match_transformers_4_57(model_type):
    inputs, logits = batch(model_type)
    with torch.no_grad():
        torch.testing.assert_close(base(model_type)(**inputs).logits, logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", [c for c in CASES if c not in REFUSED])
def test_converted_adapter_reproduces_adapterhub(name, tmp_path):
    model_type, expected = case(name)
    inputs, base_logits = batch(model_type)
    # the fixture's adapter really changes the outputs, by more than the tolerance of the comparison below
    assert (expected - base_logits).abs().max() > 5e-5
    report = convert(FIXTURES / "cases" / name / "adapter", tmp_path)
    assert report.head is not None and not report.head_included  # reported, left out
    model = PeftModel.from_pretrained(base(model_type), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_settings_without_a_counterpart_are_refused_by_name(name, tmp_path):
    with pytest.raises(ConversionError, match=REFUSED[name]):
        convert(FIXTURES / "cases" / name / "adapter", tmp_path)
    assert not (tmp_path / "adapter_model.safetensors").exists()


def test_from_adapterhub_loads_onto_a_base_with_another_leading_path():
    model_type, expected = case("bert_double_seq_bn")
    inputs, _ = batch(model_type)
    encoder = base(model_type).bert  # AdapterHub's keys start with "bert."; this model's modules do not
    model = from_adapterhub(FIXTURES / "cases" / "bert_double_seq_bn" / "adapter", encoder).eval()
    full = base(model_type)
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state
        logits = full.classifier(full.bert.pooler(hidden) if full.bert.pooler is not None else hidden[:, 0])
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert model.conversion_report.config.original_ln_before is False
    assert "BottleneckConfig, 4 adapted modules" in model.conversion_report.summary()


def test_cli_converts_and_includes_the_head_when_asked(tmp_path):
    source = FIXTURES / "cases" / "llama_compacter++" / "adapter"
    done = subprocess.run([sys.executable, "-m", "peft_bottleneck.convert", "adapterhub", str(source),
                           str(tmp_path / "out"), "--include-head"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "prediction head" in done.stdout and "included" in done.stdout
    assert set(load_file(tmp_path / "out" / "adapterhub_head.safetensors")) == {"lm_head.weight"}
    from peft_bottleneck.convert.__main__ import main as convert_main

    assert convert_main(["adapterhub", str(tmp_path / "nowhere"), str(tmp_path / "x")]) == 2
