"""Adapter averaging (AdapterHub's average_adapter, linear) and the Split composition block."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_inputs, tiny_model
from peft import PeftModel, get_peft_model

import peft_bottleneck as pb
from peft_bottleneck import BatchSplit, Split, Stack, average_adapter
from peft_bottleneck.averaging import _average_tensors

KINDS = {
    "houlsby": lambda: pb.BottleneckConfig(task_type="SEQ_CLS", init_weights=False),
    "pfeiffer-gated": lambda: pb.BottleneckConfig(task_type="SEQ_CLS", placement="pfeiffer", init_weights=False,
                                                  use_gating=True, ln_after=True, scaling="learned"),
    "parallel": lambda: pb.ParallelAdapterConfig(task_type="SEQ_CLS", init_weights=False),
    "compacter": lambda: pb.CompacterConfig(task_type="SEQ_CLS", bottleneck_size=8, init_weights=False),
    "controller": lambda: pb.AdapterControllerConfig(tasks=["t0", "t1"], task_type="SEQ_CLS",
                                                     adapter=pb.BottleneckConfig(init_weights=False)),
}


def adapters(kind: str, names=("a", "b")):
    torch.manual_seed(0)
    model = get_peft_model(tiny_model("bert"), KINDS[kind](), adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, KINDS[kind]())
    return model.eval()


def every_tensor(model, name: str) -> dict:
    return {f"{layer_name}.{tensor}": value.detach().clone() for layer_name, layer in model.named_modules()
            if isinstance(layer, pb.AdapterLayer) and name in layer.settings
            for tensor, value in layer.tensors_of(name, own_only=True).items()}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("weights, normalize, expected", [
    (None, True, (0.5, 0.5)),
    ([0.7, 0.3], True, (0.7, 0.3)),
    ([2.0, 6.0], True, (0.25, 0.75)),
    ([1.0, -1.0], False, (1.0, -1.0)),  # task arithmetic: a minus b
    ([1.5, -0.5], True, (1.5, -0.5)),
])
def test_every_tensor_is_the_weighted_sum(kind, weights, normalize, expected):
    model = adapters(kind)
    used = average_adapter(model, "avg", ["a", "b"], weights, normalize_weights=normalize)
    assert used == pytest.approx({"a": expected[0], "b": expected[1]})
    a, b, avg = every_tensor(model, "a"), every_tensor(model, "b"), every_tensor(model, "avg")
    assert a.keys() == avg.keys() and a
    for key in avg:
        torch.testing.assert_close(avg[key], expected[0] * a[key] + expected[1] * b[key])


def test_the_average_is_a_normal_adapter(tmp_path):
    model = adapters("houlsby", ("a", "b", "c"))
    average_adapter(model, "avg", ["a", "b"], [0.6, 0.4])
    inputs = tiny_inputs("bert")
    model.set_adapter("avg")
    with torch.no_grad():
        alone = model(**inputs).logits
        routed = model(**inputs, adapter_names=["avg", "c", "avg"]).logits
        stacked = model(**inputs, composition=Stack("c", "avg")).logits
    # a mixed batch's per-example matmuls may round differently in the last bit from the active adapter's one matmul
    torch.testing.assert_close(routed[0::2], alone[0::2], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(stacked, alone, rtol=1e-4, atol=1e-4)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_model("bert"), tmp_path / "avg", adapter_name="avg").eval()
    with torch.no_grad():
        reloaded = loaded(**inputs).logits
    # the head is not averaged: both models carry the base's head for "avg"
    torch.testing.assert_close(reloaded, alone)


def test_a_one_adapter_average_copies_or_scales():
    model = adapters("houlsby")
    average_adapter(model, "same", ["a"])
    average_adapter(model, "scaled", ["a"], [0.5], normalize_weights=False)
    a, copied, scaled = every_tensor(model, "a"), every_tensor(model, "same"), every_tensor(model, "scaled")
    for key in a:
        assert torch.equal(copied[key], a[key])
        torch.testing.assert_close(scaled[key], 0.5 * a[key])


@pytest.mark.parametrize("call, match", [
    (dict(adapter_list=["a", "nope"]), "does not have: \\['nope'\\]"),
    (dict(adapter_list=[]), "at least one adapter"),
    (dict(adapter_list=["a", "a"]), "twice"),
    (dict(adapter_list=["a", "b"], weights=[1.0]), "one finite number per adapter"),
    (dict(adapter_list=["a", "b"], weights=[1.0, float("nan")]), "one finite number per adapter"),
    (dict(adapter_list=["a", "b"], weights=[1.0, -1.0]), "add up to 0"),
    (dict(adapter_list=["a", "b"], combine_strategy="lora_delta_w_svd"), "a LoRA strategy"),
    (dict(adapter_list=["a", "wide"]), "differs from 'a' in \\['bottleneck_size'\\]"),
    (dict(adapter_list=["a", "pfeiffer"]), "differs from 'a' in"),
    (dict(adapter_list=["a", "b"], name="b"), "exists already"),
])
def test_refusals_leave_the_model_as_it_was(call, match):
    model = adapters("houlsby")
    model.add_adapter("wide", pb.BottleneckConfig(task_type="SEQ_CLS", bottleneck_size=8))
    model.add_adapter("pfeiffer", pb.BottleneckConfig(task_type="SEQ_CLS", placement="pfeiffer"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    call = dict(call)
    name = call.pop("name", "avg")
    with pytest.raises(ValueError, match=match):
        average_adapter(model, name, **call)
    assert set(model.peft_config) == {"a", "b", "wide", "pfeiffer"}
    assert model.state_dict().keys() == before.keys()


def test_a_failure_half_way_removes_the_new_adapter(monkeypatch):
    model = adapters("houlsby")

    def boom(*args):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("peft_bottleneck.averaging._average_tensors", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        average_adapter(model, "avg", ["a", "b"])
    assert set(model.peft_config) == {"a", "b"}
    assert not any("avg" in layer.settings for layer in model.modules() if isinstance(layer, pb.AdapterLayer))
    assert _average_tensors  # the real one stays importable


# -- Split ------------------------------------------------------------------------------------------------------


def layer_output(model, layer, x, block):
    with torch.no_grad(), pb.composing(model, block):
        return layer(x)


@pytest.mark.parametrize("block, pieces", [
    (Split("a", "b", splits=[2, 4]), [(0, 2, "a"), (2, 6, "b")]),
    (Split("a", "b", "c", splits=2), [(0, 2, "a"), (2, 4, "b"), (4, 6, "c")]),
    (Split(Stack("c", "a"), "b", splits=[5, 1]), [(0, 5, Stack("c", "a")), (5, 6, "b")]),
    (Split("a", Split("b", "c", splits=[1, 2]), splits=[3, 3]), [(0, 3, "a"), (3, 4, "b"), (4, 6, "c")]),
])
def test_split_sends_each_slice_of_the_sequence_to_its_child(block, pieces):
    model = adapters("houlsby", ("a", "b", "c"))
    layer = model.base_model.model.bert.encoder.layer[0].output.dense
    x = torch.randn(3, 6, 64)
    out = layer_output(model, layer, x, block)
    expected = torch.cat([layer_output(model, layer, x[:, start:end], child) for start, end, child in pieces], 1)
    torch.testing.assert_close(out, expected)
    assert not torch.equal(out, layer_output(model, layer, x, "a"))


def test_split_nests_where_adapterhub_allows_and_saves():
    model = adapters("houlsby", ("a", "b", "c"))
    inputs = tiny_inputs("bert")  # 6 tokens
    block = Stack("c", Split("a", "b", splits=[4, 2]))
    with torch.no_grad():
        out = model(**inputs, composition=block).logits
        batch_split = model(**inputs, composition=BatchSplit(Split("a", "b", splits=[4, 2]), "c",
                                                             batch_sizes=[2, 1])).logits
    assert out.shape == batch_split.shape
    assert pb.tuners.base.blocks.from_dict(block.to_dict()) == block
    with pytest.raises(ValueError, match="cannot hold a Split"):
        pb.Average(Split("a", "b", splits=3), "c")
    with pytest.raises(ValueError, match="`splits` must be one positive integer per child"):
        Split("a", "b", splits=[3])
    with pytest.raises(ValueError, match="must add up to the sequence length"):
        model(**inputs, composition=Split("a", "b", splits=[2, 2]))
