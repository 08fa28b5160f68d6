"""The PEFT contract for the bottleneck (Houlsby/Pfeiffer) and parallel adapters on tiny random models."""

import copy
import json
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import model_output, task_type, tiny_inputs, tiny_model
from peft import PeftConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file

from peft_bottleneck import BottleneckConfig, BottleneckLayer, CompacterConfig, ParallelAdapterConfig

ARCHS = ["bert", "gpt2", "llama", "t5", "bart"]
KINDS = {
    "houlsby": lambda **kw: BottleneckConfig(**kw),
    "pfeiffer": lambda **kw: BottleneckConfig(placement="pfeiffer", **kw),
    "parallel": lambda **kw: ParallelAdapterConfig(**kw),
    "compacter": lambda **kw: CompacterConfig(bottleneck_size=8, **kw),
    "compacter++": lambda **kw: CompacterConfig(bottleneck_size=8, placement="pfeiffer", **kw),
}
PREFIX = {"houlsby": "bottleneck_", "pfeiffer": "bottleneck_", "parallel": "parallel_adapter_",
          "compacter": "compacter_", "compacter++": "compacter_"}


def linear_maps(layer, prefix, name="default"):
    """The adapter's down and up projection of route 0, as functions."""
    down_w, down_b, up_w, up_b = (getattr(layer, prefix + t)[name][0] for t in ("down_weight", "down_bias",
                                                                              "up_weight", "up_bias"))
    return (lambda x: F.linear(x, down_w, down_b)), (lambda x: F.linear(x, up_w, up_b))


def make(kind, model_type, **kw):
    return KINDS[kind](task_type=task_type(model_type), **kw)


def train_a_few_steps(model, inputs, steps=3):
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        out = model_output(model, inputs)
        loss = out.float().pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("model_type", ARCHS)
def test_only_adapters_and_head_train_and_training_changes_outputs(kind, model_type):
    base = tiny_model(model_type)
    frozen = {k: v.clone() for k, v in base.state_dict().items()}
    inputs = tiny_inputs(model_type)
    with torch.no_grad():
        reference = model_output(base, inputs)
    model = get_peft_model(base, make(kind, model_type))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for name in trainable:
        assert PREFIX[kind] in name or "modules_to_save" in name, name
    train_a_few_steps(model, inputs)
    with torch.no_grad():
        assert not torch.allclose(model_output(model, inputs), reference)
        with model.disable_adapter():
            assert torch.equal(model_output(model, inputs), reference)
    unloaded = model.unload()
    # the base weights were never touched (the head is a modules_to_save copy, which PEFT's unload keeps trained)
    for key, value in unloaded.state_dict().items():
        if key.startswith("classifier."):
            continue
        assert torch.equal(value, frozen[key]), key


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("model_type", ARCHS)
def test_save_and_load_round_trip_is_exact(kind, model_type, tmp_path):
    inputs = tiny_inputs(model_type)
    model = get_peft_model(tiny_model(model_type), make(kind, model_type, init_weights=False))
    with torch.no_grad():
        expected = model_output(model, inputs)
    model.save_pretrained(tmp_path)

    saved = load_file(os.path.join(tmp_path, "adapter_model.safetensors"))
    for key in saved:
        assert PREFIX[kind] in key or "classifier" in key, f"non-adapter weight saved: {key}"
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == make(kind, model_type).peft_type.value

    loaded = PeftModel.from_pretrained(tiny_model(model_type), tmp_path)
    assert type(loaded.peft_config["default"]) is type(make(kind, model_type))
    with torch.no_grad():
        assert torch.equal(model_output(loaded, inputs), expected)


def test_saved_file_holds_only_adapter_weights_and_is_small(tmp_path):
    model = get_peft_model(tiny_model("llama"), BottleneckConfig(task_type="CAUSAL_LM"))
    model.save_pretrained(tmp_path)
    saved = load_file(os.path.join(tmp_path, "adapter_model.safetensors"))
    n_saved = sum(t.numel() for t in saved.values())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n_saved == n_trainable


def test_several_named_adapters(tmp_path):
    inputs = tiny_inputs("bert")
    base = tiny_model("bert")
    with torch.no_grad():
        reference = model_output(base, inputs)
    model = get_peft_model(base, BottleneckConfig(task_type="SEQ_CLS", init_weights=False))
    model.add_adapter("second", BottleneckConfig(task_type="SEQ_CLS", init_weights=False, placement="pfeiffer"))
    with torch.no_grad():
        first = model_output(model, inputs)
        model.set_adapter("second")
        second = model_output(model, inputs)
    assert not torch.allclose(first, second)
    # only the active adapter trains
    assert all("second" in n or "modules_to_save" in n for n, p in model.named_parameters() if p.requires_grad)

    model.save_pretrained(tmp_path)  # writes default/ and second/
    reloaded = PeftModel.from_pretrained(tiny_model("bert"), tmp_path / "second", adapter_name="second")
    with torch.no_grad():
        assert torch.equal(model_output(reloaded, inputs), second)

    model.delete_adapter("second")
    assert "second" not in model.peft_config
    assert not any("second" in n for n, _ in model.named_parameters())
    with torch.no_grad():
        assert torch.equal(model_output(model, inputs), first)
        unloaded = model.unload()
        assert not any(isinstance(m, BaseTunerLayer) for m in unloaded.modules())
        assert torch.equal(model_output(unloaded, inputs), reference)


def test_stacked_active_adapters_apply_in_sequence():
    linear = torch.nn.Linear(8, 8)
    config = dict(target_modules=["0"], bottleneck_size=3, init_weights=False)
    model = get_peft_model(torch.nn.Sequential(linear), BottleneckConfig(**config))
    model.add_adapter("other", BottleneckConfig(**config))
    model.base_model.set_adapter(["default", "other"])
    layer = model.base_model.model[0]
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        h = linear(x)
        for name in ("default", "other"):
            down_w, down_b, up_w, up_b = (t[0] for t in layer.projections(name))
            h = h + F.linear(F.silu(F.linear(h, down_w, down_b)), up_w, up_b)
        assert torch.allclose(layer(x), h, atol=1e-6)


def test_merge_and_unload_explains_why_it_cannot():
    model = get_peft_model(tiny_model("bert"), BottleneckConfig(task_type="SEQ_CLS"))
    with pytest.raises(ValueError, match="cannot be merged.*non-linearity"):
        model.merge_and_unload()
    with pytest.raises(ValueError, match="cannot be merged"):
        model.base_model.merge_adapter()


def test_sequential_formula_on_a_linear_layer():
    torch.manual_seed(0)
    linear = torch.nn.Linear(8, 8)
    model = get_peft_model(torch.nn.Sequential(linear), BottleneckConfig(
        target_modules=["0"], bottleneck_size=3, non_linearity="tanh", scaling=0.5, init_weights=False))
    layer = model.base_model.model[0]
    down, up = linear_maps(layer, "bottleneck_")
    x = torch.randn(4, 8)
    with torch.no_grad():
        h = linear(x)
        assert torch.allclose(layer(x), h + 0.5 * up(torch.tanh(down(h))), atol=1e-6)


def test_parallel_formula_reads_the_input():
    torch.manual_seed(0)
    linear = torch.nn.Linear(8, 6)
    model = get_peft_model(torch.nn.Sequential(linear), ParallelAdapterConfig(
        target_modules=["0"], bottleneck_size=3, init_weights=False))
    layer = model.base_model.model[0]
    down, up = linear_maps(layer, "parallel_adapter_")
    x = torch.randn(4, 8)
    with torch.no_grad():
        assert torch.allclose(layer(x), linear(x) + 4.0 * up(torch.relu(down(x))), atol=1e-6)


def test_parallel_block_adapter_equals_he_et_al_on_bert():
    torch.manual_seed(0)
    model = get_peft_model(tiny_model("bert"), ParallelAdapterConfig(task_type="SEQ_CLS", init_weights=False))
    block = model.base_model.model.bert.encoder.layer[0]
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        dense = block.output.dense
        down, up = linear_maps(dense, "parallel_adapter_")
        expected = dense.base_layer(block.intermediate(x)) + 4.0 * up(torch.relu(down(x)))
        got = dense(block.intermediate(x))
    assert torch.allclose(got, expected, atol=1e-6)


def test_learned_scaling_is_trained_and_saved(tmp_path):
    model = get_peft_model(tiny_model("bert"), BottleneckConfig(task_type="SEQ_CLS", scaling="learned"))
    scale_names = [n for n, p in model.named_parameters() if "bottleneck_scale" in n]
    assert scale_names and all(dict(model.named_parameters())[n].requires_grad for n in scale_names)
    model.save_pretrained(tmp_path)
    assert any("bottleneck_scale" in k for k in load_file(tmp_path / "adapter_model.safetensors"))


@pytest.mark.parametrize("init", ["bert", "houlsby"])
def test_alternative_inits_are_small_and_not_zero(init):
    model = get_peft_model(tiny_model("bert"), BottleneckConfig(task_type="SEQ_CLS", init_weights=init))
    up = model.base_model.model.bert.encoder.layer[0].output.dense.bottleneck_up_weight["default"]
    assert 0 < up.abs().max() <= (0.2 if init == "bert" else 0.02)
    expected_std = 0.02 if init == "bert" else None
    if expected_std:
        assert abs(up.std().item() - expected_std) < 0.005


def test_bottleneck_size_and_reduction_factor():
    model = get_peft_model(tiny_model("bert"), BottleneckConfig(task_type="SEQ_CLS", reduction_factor=4))
    assert model.base_model.model.bert.encoder.layer[0].output.dense.bottleneck_down_weight["default"].shape == (1, 8, 32)
    model = get_peft_model(tiny_model("bert"), BottleneckConfig(task_type="SEQ_CLS", bottleneck_size=5))
    assert model.base_model.model.bert.encoder.layer[0].output.dense.bottleneck_down_weight["default"].shape == (1, 5, 32)


def test_bias_bottleneck_only_trains_and_saves_the_adapted_biases(tmp_path):
    model = get_peft_model(tiny_model("bert"), BottleneckConfig(task_type="SEQ_CLS", bias="bottleneck_only"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "base_model.model.bert.encoder.layer.0.output.dense.base_layer.bias" in trainable
    assert "base_model.model.bert.encoder.layer.0.intermediate.dense.bias" not in trainable


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(non_linearity="softplus"), "non_linearity"),
        (dict(reduction_factor=0), "reduction_factor"),
        (dict(bottleneck_size=0), "bottleneck_size"),
        (dict(scaling="big"), "scaling"),
        (dict(init_weights="xavier"), "init_weights"),
        (dict(adapter_dropout=1.5), "adapter_dropout"),
        (dict(bias="lora_only"), "bias"),
        (dict(placement="middle"), "placement"),
    ],
)
def test_bad_config_names_the_field_and_allowed_values(kwargs, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        BottleneckConfig(**kwargs)


def test_bad_non_linearity_lists_the_allowed_values():
    with pytest.raises(ValueError, match="relu.*gelu.*gelu_new.*silu.*swish.*tanh.*identity"):
        ParallelAdapterConfig(non_linearity="elu")


def test_config_round_trips_through_peft_config(tmp_path):
    config = BottleneckConfig(placement="pfeiffer", scaling="learned", bottleneck_size=7, task_type="SEQ_CLS")
    config.save_pretrained(tmp_path)
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, BottleneckConfig)
    assert (loaded.placement, loaded.scaling, loaded.bottleneck_size, loaded.non_linearity) == (
        "pfeiffer", "learned", 7, "relu")


def test_adapter_dropout_is_active_in_training_only():
    model = get_peft_model(tiny_model("bert"), BottleneckConfig(task_type="SEQ_CLS", adapter_dropout=0.5,
                                                                init_weights=False))
    inputs = tiny_inputs("bert")
    with torch.no_grad():
        model.eval()
        assert torch.equal(model_output(model, inputs), model_output(model, inputs))
        layer = model.base_model.model.bert.encoder.layer[0].output.dense
        layer.train()
        x = torch.randn(2, 5, 64)
        assert not torch.equal(layer(x), layer(x))


def test_deepcopy_keeps_a_working_parallel_tap():
    model = get_peft_model(tiny_model("bert"), ParallelAdapterConfig(task_type="SEQ_CLS", init_weights=False))
    inputs = tiny_inputs("bert")
    with torch.no_grad():
        expected = model_output(model, inputs)
        assert torch.equal(model_output(copy.deepcopy(model), inputs), expected)


def test_unload_removes_the_parallel_input_taps():
    model = get_peft_model(tiny_model("bert"), ParallelAdapterConfig(task_type="SEQ_CLS"))
    base = model.unload()
    assert not base.bert.encoder.layer[0].intermediate._forward_pre_hooks


def test_every_tuner_layer_is_one_adapter_layer():
    from peft_bottleneck import AdapterLayer, ParallelAdapterLayer

    model = get_peft_model(tiny_model("bert"), ParallelAdapterConfig(task_type="SEQ_CLS"))
    layers = [m for m in model.modules() if isinstance(m, AdapterLayer)]
    assert len(layers) == 2 and all(type(m) is ParallelAdapterLayer for m in layers)
