"""Our tuner types are real PeftType members, registered through PEFT, and visible to PEFT and transformers."""

import importlib
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import tiny_inputs, tiny_model
from peft import (
    AutoPeftModelForSequenceClassification,
    PeftConfig,
    PeftModel,
    PeftType,
    get_model_status,
    get_peft_model,
)
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

import peft_bottleneck
from peft_bottleneck import BottleneckConfig, BottleneckModel, ParallelAdapterConfig, ParallelAdapterModel


@pytest.mark.parametrize(
    "name, config_cls, model_cls",
    [("BOTTLENECK", BottleneckConfig, BottleneckModel), ("PARALLEL_ADAPTER", ParallelAdapterConfig, ParallelAdapterModel)],
)
def test_types_are_enum_members_registered_with_peft(name, config_cls, model_cls):
    member = PeftType[name]
    assert isinstance(member, PeftType) and member.value == name
    assert config_cls().peft_type is member
    assert PEFT_TYPE_TO_CONFIG_MAPPING[member] is config_cls
    assert PEFT_TYPE_TO_TUNER_MAPPING[member] is model_cls
    assert PEFT_TYPE_TO_PREFIX_MAPPING[member] == name.lower() + "_" == model_cls.prefix


def test_second_import_and_reload_are_harmless():
    members = len(PeftType.__members__)
    importlib.reload(peft_bottleneck.registration)
    importlib.reload(importlib.import_module("peft_bottleneck.tuners.bottleneck"))
    assert len(PeftType.__members__) == members
    config = importlib.import_module("peft_bottleneck.tuners.bottleneck").BottleneckConfig()
    assert PEFT_TYPE_TO_CONFIG_MAPPING[config.peft_type] is type(config)
    # later tests use the names imported at the top
    importlib.reload(importlib.import_module("peft_bottleneck.tuners.bottleneck"))
    PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.BOTTLENECK] = BottleneckConfig
    PEFT_TYPE_TO_TUNER_MAPPING[PeftType.BOTTLENECK] = BottleneckModel


@pytest.fixture
def saved_adapter(tmp_path):
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    tiny_model("bert").save_pretrained(base_dir)
    base = type(tiny_model("bert")).from_pretrained(base_dir).eval()
    model = get_peft_model(base, BottleneckConfig(task_type="SEQ_CLS", init_weights=False)).eval()
    inputs = tiny_inputs("bert")
    with torch.no_grad():
        expected = model(**inputs).logits
    model.save_pretrained(adapter_dir)
    return base_dir, adapter_dir, inputs, expected, model


def test_peft_config_from_pretrained_and_status(saved_adapter):
    _, adapter_dir, _, _, model = saved_adapter
    assert isinstance(PeftConfig.from_pretrained(adapter_dir), BottleneckConfig)
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["peft_type"] == "BOTTLENECK"
    status = get_model_status(model)
    assert status.available_adapters == ["default"] and status.enabled is True
    assert status.trainable_params > 0


def test_model_card_names_the_type(saved_adapter):
    card = (saved_adapter[1] / "README.md").read_text()
    assert "peft-bottleneck" in card and "bottleneck" in card


def test_auto_peft_model(saved_adapter):
    _, adapter_dir, inputs, expected, _ = saved_adapter
    model = AutoPeftModelForSequenceClassification.from_pretrained(adapter_dir).eval()
    assert isinstance(model.base_model, BottleneckModel)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, expected)


def test_transformers_load_adapter(saved_adapter):
    base_dir, adapter_dir, inputs, expected, _ = saved_adapter
    model = type(tiny_model("bert")).from_pretrained(base_dir).eval()
    model.load_adapter(adapter_dir)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, expected)
    # (transformers 5.24's delete_adapter/active_adapters demand peft>=0.22, which is not released yet)


def test_peft_model_from_pretrained(saved_adapter):
    base_dir, adapter_dir, inputs, expected, _ = saved_adapter
    model = PeftModel.from_pretrained(type(tiny_model("bert")).from_pretrained(base_dir), adapter_dir).eval()
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, expected)


def test_fresh_process_finds_the_type_through_the_start_up_hook_or_names_it_when_turned_off(saved_adapter):
    # with the hook (installed with the package) a process that only imports peft resolves our type; with it
    # turned off PEFT looks the type up before any of our code can run: its KeyError names the type
    code = f"from peft import PeftConfig; print(type(PeftConfig.from_pretrained({str(saved_adapter[1])!r})).__name__)"
    hooked = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert hooked.returncode == 0 and hooked.stdout.strip() == "BottleneckConfig", hooked.stderr[-2000:]
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/",
                         env={**os.environ, "PEFT_BOTTLENECK_AUTOLOAD": "0"})
    assert off.returncode != 0 and "BOTTLENECK" in off.stderr
