"""The PEFT and transformers behaviour this package leans on, pinned: a release that changes one of these fails
here, loudly, instead of silently dropping a guarantee (routing, task heads, transactional loads, checkpointing)."""

from __future__ import annotations

import inspect

import pytest
import torch
from conftest import tiny_inputs, tiny_model
from peft import PeftModel, get_peft_model
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner
from peft.utils.other import AuxiliaryTrainingWrapper, ModulesToSaveWrapper

import peft_bottleneck as pb
from peft_bottleneck import safety
from peft_bottleneck.tuners.base.model import AdapterTuner


def test_peft_strips_adapter_names_and_calls_our_forward_hook_with_every_keyword(monkeypatch):
    # routing enters through BaseTuner._enable_peft_forward_hooks, which PeftModel calls around forward and generate
    # with the call's keywords; PEFT itself strips only `adapter_names` (our tuner's forward strips task= and
    # composition=)
    model = get_peft_model(tiny_model("llama"), pb.BottleneckConfig(task_type="CAUSAL_LM")).eval()
    assert "adapter_names" in model.special_peft_forward_args
    assert not {"task", "composition"} & model.special_peft_forward_args
    seen = []
    original = AdapterTuner._enable_peft_forward_hooks

    def spy(self, *args, **kwargs):
        seen.append(sorted(kwargs))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(AdapterTuner, "_enable_peft_forward_hooks", spy)
    inputs = tiny_inputs("llama")
    with torch.no_grad():
        model(**inputs, adapter_names=["default"] * 3)
        model.generate(input_ids=inputs["input_ids"], max_new_tokens=1, adapter_names=["default"] * 3,
                       pad_token_id=0)
    assert len(seen) == 2 and all("adapter_names" in kwargs for kwargs in seen)


def test_modules_to_save_wrapper_fields_we_snapshot_and_set():
    model = get_peft_model(tiny_model("bert"), pb.BottleneckConfig(task_type="SEQ_CLS"))
    head = model.base_model.model.classifier
    assert isinstance(head, ModulesToSaveWrapper) and isinstance(head, AuxiliaryTrainingWrapper)
    assert set(head.modules_to_save) == {"default"} and head._adapters == {"default"}
    assert hasattr(head, "_active_adapter") and hasattr(head, "_disable_adapters")
    assert hasattr(head, "original_module")
    with pytest.raises(ValueError, match="Only one adapter can be set"):  # why our tuner's set_adapter picks one
        _two_heads_check()
    head.set_adapter([])  # an empty list turns the copy off: the base head computes
    assert head.active_adapters == []


def _two_heads_check():
    model = get_peft_model(tiny_model("bert"), pb.BottleneckConfig(task_type="SEQ_CLS"), adapter_name="a")
    model.add_adapter("b", pb.BottleneckConfig(task_type="SEQ_CLS"))
    model.base_model.model.classifier.check_set_adapter(["a", "b"])


def test_peft_set_adapter_refuses_a_list_which_our_wrapper_accepts():
    original = inspect.unwrap(PeftModel.set_adapter)
    model = get_peft_model(tiny_model("bert"), pb.BottleneckConfig(task_type="SEQ_CLS"), adapter_name="a")
    model.add_adapter("b", pb.BottleneckConfig(task_type="SEQ_CLS"))
    with pytest.raises(TypeError):
        original(model, ["a", "b"])
    model.set_adapter(["a", "b"])
    assert model.base_model.active_adapters == ["a", "b"]


def test_the_load_entry_points_we_wrap_exist_with_the_arguments_we_read():
    assert getattr(PeftModel, safety.WRAPPED, False)
    kinds = {p.kind for p in inspect.signature(PeftConfig._get_peft_type).parameters.values()}
    assert inspect.Parameter.VAR_KEYWORD in kinds  # subfolder / revision / token pass through as keywords
    assert hasattr(BaseTuner, "_remap_adapter_state_dict_for_load")
    from transformers.integrations.peft import PeftAdapterMixin

    assert "peft_model_id" in inspect.signature(inspect.unwrap(PeftAdapterMixin.load_adapter)).parameters


def test_an_unreadable_folder_is_guarded_not_passed_through(tmp_path):
    assert safety._our_type(safety._peft_type_of(tmp_path / "missing")) is True
    base = tiny_model("bert")
    with pytest.raises(ValueError):
        PeftModel.from_pretrained(base, tmp_path / "missing")


def test_transformers_checkpoints_through_a_per_layer_function_we_can_wrap():
    # the route reaches checkpointed re-forwards because each GradientCheckpointingLayer calls
    # self._gradient_checkpointing_func(partial(forward, ...), *args), which our tuner wraps
    from transformers.modeling_layers import GradientCheckpointingLayer

    model = tiny_model("llama")
    model.gradient_checkpointing_enable()
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert layers and all(m.gradient_checkpointing and callable(m._gradient_checkpointing_func) for m in layers)
    assert "_gradient_checkpointing_func" in inspect.getsource(GradientCheckpointingLayer.__init_subclass__)
