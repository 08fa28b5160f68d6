"""Invertible adapters (MAD-X), per-layer reduction factors, shared PHM factors and parallel Compacters: the parts of
AdapterHub's bottleneck family that used to be refused (tests/test_convert.py checks them against AdapterHub 1.3)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_inputs, tiny_model
from peft import PeftModel, get_peft_model

import peft_bottleneck as pb
from peft_bottleneck import Stack
from peft_bottleneck.tuners.base.invertible import InvertibleAdapters


def inv(kind="nice", **kw):
    return pb.BottleneckConfig(placement="pfeiffer", inv_adapter=kind, inv_adapter_reduction_factor=2,
                               init_weights=False, **kw)


def randomize_invertible(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "invertible" in name:
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))


@pytest.mark.parametrize("kind", ["nice", "glow"])
@pytest.mark.parametrize("features", [32, 33])
def test_the_couplings_invert_exactly(kind, features):
    holder = InvertibleAdapters()
    holder.add("a", kind, features, 2, "relu")
    with torch.no_grad():
        for parameter in holder.parameters():
            parameter.normal_(std=0.5)
    x = torch.randn(3, 5, features, dtype=torch.float64)
    holder.double()
    y = holder.couple("a", x)
    assert not torch.allclose(y, x)
    torch.testing.assert_close(holder.couple("a", y, reverse=True), x)


@pytest.mark.parametrize("model_type, task", [("gpt2", "CAUSAL_LM"), ("llama", "CAUSAL_LM"), ("bert", "SEQ_CLS"),
                                               ("t5", "SEQ_2_SEQ_LM")])
def test_the_inverse_before_the_head_undoes_the_embedding_coupling(model_type, task):
    # with no other adapter changing the blocks, a causal LM whose blocks were the identity would give back its
    # logits: check the two hooks directly instead (the embedding-side output inverted before the head)
    torch.manual_seed(0)
    model = get_peft_model(tiny_model(model_type), inv(task_type=task)).eval()
    randomize_invertible(model)
    tuner = model.base_model
    holder = tuner._invertible()
    x = torch.randn(2, 4, 32)
    with torch.no_grad():
        torch.testing.assert_close(holder.routed(holder.routed(x, tuner.routing_state, ["default"], False),
                                                 tuner.routing_state, ["default"], True), x, rtol=1e-5, atol=1e-5)
    inputs = tiny_inputs(model_type)
    with torch.no_grad():
        coupled = model(**inputs).logits
        with model.disable_adapter():
            plain = model(**inputs).logits
    assert not torch.allclose(coupled, plain)


def test_mad_x_stack_saves_loads_and_routes_per_example(tmp_path):
    base = tiny_model("gpt2")
    inputs = tiny_inputs("gpt2")
    torch.manual_seed(0)
    model = get_peft_model(copy.deepcopy(base), inv(task_type="CAUSAL_LM"), adapter_name="lang")
    model.add_adapter("task", pb.BottleneckConfig(task_type="CAUSAL_LM", init_weights=False))
    model.add_adapter("lang2", inv("glow", task_type="CAUSAL_LM"))
    randomize_invertible(model)
    model.eval()
    with torch.no_grad():
        madx = model(**inputs, composition=Stack("lang", "task")).logits
        other_language = model(**inputs, composition=Stack("lang2", "task")).logits
        model.set_adapter("lang")
        lang_only = model(**inputs).logits
        mixed = model(**inputs, adapter_names=["lang", "lang2", "task"]).logits
        alone = []
        for i, name in enumerate(["lang", "lang2", "task"]):
            model.set_adapter(name)
            alone.append(model(**{k: v[i:i + 1] for k, v in inputs.items()}).logits)
    assert not torch.allclose(madx, other_language)
    torch.testing.assert_close(mixed, torch.cat(alone), rtol=1e-5, atol=1e-5)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "lang", adapter_name="de").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, lang_only)
    loaded.load_adapter(tmp_path / "task", adapter_name="task")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs, composition=Stack("de", "task")).logits, madx)


def test_gradients_reach_only_the_active_invertible_adapter():
    model = get_peft_model(tiny_model("bert"), inv(task_type="SEQ_CLS"), adapter_name="a")
    model.add_adapter("b", inv(task_type="SEQ_CLS"))
    model.set_adapter("a")
    model(**tiny_inputs("bert")).logits.pow(2).mean().backward()
    holder = model.base_model._invertible()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in holder["a"].parameters())
    assert all(not p.requires_grad for p in holder["b"].parameters())


def test_deleting_and_unloading_remove_the_hooks():
    base = tiny_model("bert")
    inputs = tiny_inputs("bert")
    with torch.no_grad():
        reference = base(**inputs).logits
    model = get_peft_model(copy.deepcopy(base), inv(task_type="SEQ_CLS"), adapter_name="a")
    model.add_adapter("b", pb.BottleneckConfig(task_type="SEQ_CLS"))
    model.delete_adapter("a")
    assert model.base_model._invertible() is None
    model.set_adapter("b")
    with torch.no_grad():
        assert torch.equal(model.eval()(**inputs).logits, reference)  # b is the identity at init
    model = get_peft_model(copy.deepcopy(base), inv(task_type="SEQ_CLS"))
    unloaded = model.unload()
    assert not any(m._forward_pre_hooks for m in unloaded.modules())
    with torch.no_grad():
        assert torch.equal(unloaded.eval()(**inputs).logits, reference)


def test_a_deep_copy_routes_through_its_own_couplings():
    torch.manual_seed(0)
    model = get_peft_model(tiny_model("gpt2"), inv(task_type="CAUSAL_LM")).eval()
    randomize_invertible(model)
    copied = copy.deepcopy(model)
    inputs = tiny_inputs("gpt2")
    with torch.no_grad():
        before = copied(**inputs).logits
        for parameter in model.base_model._invertible().parameters():
            parameter.add_(1.0)  # the original changes; the copy must not follow
        assert torch.equal(copied(**inputs).logits, before)
    copied.delete_adapter("default")
    assert any(m._forward_pre_hooks for m in model.modules())  # the original keeps its hooks


def test_invertible_settings_are_checked():
    with pytest.raises(ValueError, match="`inv_adapter` must be one of"):
        pb.BottleneckConfig(inv_adapter="realnvp", inv_adapter_reduction_factor=2)
    with pytest.raises(ValueError, match="`inv_adapter_reduction_factor` is required"):
        pb.BottleneckConfig(inv_adapter="nice")
    with pytest.raises(ValueError, match="task-routed controller cannot hold one"):
        get_peft_model(tiny_model("bert"), pb.AdapterControllerConfig(tasks=["a", "b"], adapter=inv()))


def test_average_adapter_averages_the_invertible_adapters_too():
    model = get_peft_model(tiny_model("bert"), inv(task_type="SEQ_CLS"), adapter_name="a")
    model.add_adapter("b", inv(task_type="SEQ_CLS"))
    randomize_invertible(model)
    pb.average_adapter(model, "avg", ["a", "b"], [0.25, 0.75])
    holder = model.base_model._invertible()
    for key, value in holder["avg"].state_dict().items():
        torch.testing.assert_close(value, 0.25 * holder["a"].state_dict()[key] + 0.75 * holder["b"].state_dict()[key])


# -- per-layer reduction factors, shared PHM factors, parallel Compacter -------------------------------------------


def test_a_reduction_factor_per_layer_sizes_each_layer():
    model = get_peft_model(tiny_model("bert"), pb.BottleneckConfig(task_type="SEQ_CLS",
                                                                    reduction_factor={1: 2, "default": 8}))
    widths = {n: m.bottleneck_down_weight["default"].shape[1] for n, m in model.named_modules()
              if isinstance(m, pb.AdapterLayer)}
    assert {n.split("layer.")[1].split(".")[0]: w for n, w in widths.items()} == {"0": 4, "1": 16}
    assert model.peft_config["default"].reduction_factor == {"1": 2, "default": 8}
    with pytest.raises(ValueError, match="names neither layer 0 nor 'default'"):
        get_peft_model(tiny_model("bert"), pb.BottleneckConfig(task_type="SEQ_CLS", reduction_factor={"1": 2}))
    with pytest.raises(ValueError, match="layer indices .* and 'default' as keys"):
        pb.BottleneckConfig(reduction_factor={"first": 2})
    with pytest.raises(ValueError, match="reduction_factor\\['default'\\]"):
        pb.BottleneckConfig(reduction_factor={"default": 0})


def test_shared_phm_factors_are_one_set_for_every_layer(tmp_path):
    base = tiny_model("bert")
    config = pb.CompacterConfig(task_type="SEQ_CLS", bottleneck_size=8, shared_W_phm=True, init_weights=False)
    model = get_peft_model(copy.deepcopy(base), config).eval()
    layers = [m for m in model.modules() if isinstance(m, pb.CompacterLayer)]
    owners = [layer for layer in layers if "compacter_down_s" in layer.adapter_layer_names]
    assert len(layers) == 4 and len(owners) == 1
    assert all(layer.tensors_of("default")["down_s"] is owners[0].compacter_down_s["default"] for layer in layers)
    inputs = tiny_inputs("bert")
    model(**inputs).logits.pow(2).mean().backward()
    assert owners[0].compacter_down_s["default"].grad.abs().sum() > 0
    with torch.no_grad():
        expected = model(**inputs).logits
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, expected)
    with pytest.raises(ValueError, match="needs `factorized_phm_W=True`"):
        pb.CompacterConfig(shared_W_phm=True, factorized_phm_W=False)


def test_a_parallel_compacter_spans_the_feed_forward_block():
    model = get_peft_model(tiny_model("llama"), pb.CompacterConfig(task_type="CAUSAL_LM", placement="pfeiffer",
                                                                     is_parallel=True, bottleneck_size=8))
    assert sorted(model.base_model.targeted_module_names) == [f"model.layers.{i}.mlp" for i in range(2)]
    assert model.peft_config["default"].input_from == {"mlp": "post_attention_layernorm"}
    with pytest.raises(ValueError, match="placement='pfeiffer'"):
        pb.CompacterConfig(is_parallel=True)
