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
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    if model_type in AUTO:  # an LM head is the base model's own output embedding: reported, not carried
        assert report.head is not None and not report.head_included and config["task_type"] == "CAUSAL_LM"
        model = PeftModel.from_pretrained(base(model_type), tmp_path).eval()
    else:  # AdapterHub's classifier travels as a modules_to_save head: a base with another head gets it back
        assert report.head_included and config["task_type"] == "SEQ_CLS"
        assert config["modules_to_save"] == report.head_modules
        model = PeftModel.from_pretrained(scrambled_head(base(model_type), report.head_modules), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, expected, rtol=1e-5, atol=1e-5)


def scrambled_head(model, modules):
    torch.manual_seed(1)
    for name in modules:
        for parameter in getattr(model, name).parameters():
            torch.nn.init.normal_(parameter)
    return model


def test_auto_peft_model_loads_a_converted_folder_with_its_head(tmp_path):
    from peft import AutoPeftModelForSequenceClassification

    model_type, expected = case("roberta_double_seq_bn")
    inputs, _ = batch(model_type)
    other_head = scrambled_head(base(model_type), ["classifier"])
    other_head.save_pretrained(tmp_path / "base")
    with torch.no_grad():
        assert not torch.allclose(other_head(**inputs).logits, expected, atol=1e-3)
    report = convert(FIXTURES / "cases" / "roberta_double_seq_bn" / "adapter", tmp_path / "adapter",
                     base_model=str(tmp_path / "base"))
    assert report.head_modules == ["classifier"]
    model = AutoPeftModelForSequenceClassification.from_pretrained(tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, expected, rtol=1e-5, atol=1e-5)


def test_a_head_whose_modules_the_base_lacks_is_left_out_and_reported(tmp_path):
    encoder = base("bert").bert  # no classifier here
    model = from_adapterhub(FIXTURES / "cases" / "bert_seq_bn" / "adapter", encoder)
    assert not model.conversion_report.head_included
    assert "not in the base model given" in model.conversion_report.summary()


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


def test_cli_converts_with_base_model_and_head_choices(tmp_path):
    source = FIXTURES / "cases" / "llama_compacter++" / "adapter"
    done = subprocess.run([sys.executable, "-m", "peft_bottleneck.convert", "adapterhub", str(source),
                           str(tmp_path / "out"), "--base-model", "my-org/tiny-llama"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "prediction head (LlamaForCausalLM): left out" in done.stdout
    assert "output embedding; not carried" in done.stdout
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "my-org/tiny-llama" and config["task_type"] == "CAUSAL_LM"
    classifier = FIXTURES / "cases" / "bert_seq_bn" / "adapter"
    for flags, carried in (([], True), (["--no-head"], False)):
        out = tmp_path / f"bert{len(flags)}"
        done = subprocess.run([sys.executable, "-m", "peft_bottleneck.convert", "adapterhub", str(classifier),
                               str(out), *flags], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        keys = set(load_file(out / "adapter_model.safetensors"))
        assert ("base_model.model.classifier.weight" in keys) is carried
        assert "--base-model" in done.stdout  # AdapterHub saved no model_name: the report says what to pass
    from peft_bottleneck.convert.__main__ import main as convert_main

    assert convert_main(["adapterhub", str(tmp_path / "nowhere"), str(tmp_path / "x")]) == 2
