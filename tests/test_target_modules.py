"""Default adapter positions for every supported architecture, and identity at init on each."""

import copy

import pytest
import torch
from conftest import ALL_TYPES, model_output, task_type, tiny_inputs, tiny_model
from peft import get_peft_model
from transformers.pytorch_utils import Conv1D

from peft_bottleneck import (
    BottleneckConfig,
    BottleneckLayer,
    CompacterConfig,
    CompacterLayer,
    ParallelAdapterConfig,
    ParallelAdapterLayer,
)
from peft_bottleneck.target_modules import ADAPTER_POSITIONS

# adapted modules per transformer layer: Houlsby = attention outputs + FFN output, Pfeiffer = FFN output
SEQ2SEQ_LAYERS = {"t5": 4, "bart": 4}  # 2 encoder + 2 decoder layers


def _layers(model_type):
    return SEQ2SEQ_LAYERS.get(model_type, 2)


def _attention_blocks(model_type):
    # encoder-decoders: self-attention in every layer plus cross-attention in the 2 decoder layers
    return _layers(model_type) + (2 if model_type in SEQ2SEQ_LAYERS else 0)


@pytest.mark.parametrize("model_type", ALL_TYPES)
def test_every_architecture_has_positions(model_type):
    assert model_type in ADAPTER_POSITIONS


@pytest.mark.parametrize("model_type", ALL_TYPES)
@pytest.mark.parametrize(
    "config_factory, layer_cls, expected",
    [
        (lambda t: BottleneckConfig(task_type=t, init_weights=True), BottleneckLayer,
         lambda mt: _attention_blocks(mt) + _layers(mt)),
        (lambda t: BottleneckConfig(task_type=t, placement="pfeiffer"), BottleneckLayer, _layers),
        (lambda t: ParallelAdapterConfig(task_type=t), ParallelAdapterLayer, _layers),
        (lambda t: CompacterConfig(task_type=t, bottleneck_size=8), CompacterLayer,
         lambda mt: _attention_blocks(mt) + _layers(mt)),
        (lambda t: CompacterConfig(task_type=t, bottleneck_size=8, placement="pfeiffer"), CompacterLayer, _layers),
    ],
    ids=["houlsby", "pfeiffer", "parallel", "compacter", "compacter++"],
)
def test_default_placement_is_identity_at_init(model_type, config_factory, layer_cls, expected):
    base = tiny_model(model_type)
    inputs = tiny_inputs(model_type)
    with torch.no_grad():
        reference = model_output(base, inputs)
    model = get_peft_model(copy.deepcopy(base), config_factory(task_type(model_type)))
    layers = [m for m in model.modules() if isinstance(m, layer_cls)]
    assert len(layers) == expected(model_type)
    with torch.no_grad():
        assert torch.equal(model_output(model, inputs), reference)


@pytest.mark.parametrize("model_type", ["bert", "gpt2", "llama", "t5"])
def test_placed_adapters_change_the_output(model_type):
    # the identity above is not vacuous: random adapters at the same positions do change the output
    base = tiny_model(model_type)
    inputs = tiny_inputs(model_type)
    with torch.no_grad():
        reference = model_output(base, inputs)
    for config in (BottleneckConfig(init_weights=False), ParallelAdapterConfig(init_weights=False)):
        model = get_peft_model(copy.deepcopy(base), config)
        with torch.no_grad():
            assert not torch.allclose(model(**inputs).logits, reference)


def test_houlsby_on_bert_targets_attention_and_ffn_outputs():
    model = get_peft_model(tiny_model("bert"), BottleneckConfig(task_type="SEQ_CLS"))
    names = sorted(model.base_model.targeted_module_names)
    assert names == sorted(
        f"bert.encoder.layer.{i}.{suffix}" for i in range(2) for suffix in ("attention.output.dense", "output.dense")
    )


def test_pfeiffer_on_bert_excludes_the_attention_output():
    model = get_peft_model(tiny_model("bert"), BottleneckConfig(task_type="SEQ_CLS", placement="pfeiffer"))
    assert sorted(model.base_model.targeted_module_names) == [f"bert.encoder.layer.{i}.output.dense" for i in range(2)]
    assert model.peft_config["default"].non_linearity == "relu"


def test_t5_houlsby_covers_self_cross_attention_and_ffn():
    model = get_peft_model(tiny_model("t5"), BottleneckConfig(task_type="SEQ_2_SEQ_LM"))
    names = model.base_model.targeted_module_names
    assert sum("EncDecAttention.o" in n for n in names) == 2
    assert sum("SelfAttention.o" in n for n in names) == 4
    assert sum("DenseReluDense.wo" in n for n in names) == 4


def test_gpt2_conv1d_is_wrapped_and_frozen():
    model = get_peft_model(tiny_model("gpt2"), BottleneckConfig(task_type="CAUSAL_LM"))
    layer = model.base_model.model.transformer.h[0].attn.c_proj
    assert isinstance(layer, BottleneckLayer) and isinstance(layer.get_base_layer(), Conv1D)
    assert not any(p.requires_grad for p in layer.get_base_layer().parameters())
    assert layer.bottleneck_down_weight["default"].shape[-1] == 32


def test_parallel_spans_bert_feed_forward_block():
    model = get_peft_model(tiny_model("bert"), ParallelAdapterConfig(task_type="SEQ_CLS"))
    assert model.peft_config["default"].input_from == {"output.dense": "intermediate"}
    layer = model.base_model.model.bert.encoder.layer[0].output.dense
    # reads the block input (hidden 32), not output.dense's own input (intermediate 64)
    assert layer.parallel_adapter_down_weight["default"].shape[-1] == 32
    assert layer.parallel_adapter_up_weight["default"].shape[1] == 32


def test_unknown_architecture_without_targets_says_what_to_pass():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="target_modules"):
        get_peft_model(model, BottleneckConfig())


def test_custom_module_with_target_modules():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    x = torch.randn(2, 8)
    reference = model(x)
    peft_model = get_peft_model(model, BottleneckConfig(target_modules=["0", "2"], bottleneck_size=2))
    assert torch.equal(peft_model(x), reference)
    assert peft_model.base_model.model[2].bottleneck_up_weight["default"].shape[1] == 4


def test_layers_to_transform_limits_the_layers():
    config = BottleneckConfig(task_type="CAUSAL_LM", layers_to_transform=[1], layers_pattern="layers")
    model = get_peft_model(tiny_model("llama"), config)
    assert sorted(model.base_model.targeted_module_names) == ["model.layers.1.mlp.down_proj", "model.layers.1.self_attn.o_proj"]


@pytest.mark.parametrize("config_cls", [BottleneckConfig, ParallelAdapterConfig])
@pytest.mark.parametrize("target, refused", [
    ("bert", "'bert' (BertModel)"),  # the whole model: its input is token ids
    (r".*embeddings", "'bert.embeddings'"),
    (r".*layer\.0(\.attention)?", "inside it"),  # a block and a module inside it
])
def test_unfit_targets_are_refused_by_name_and_leave_the_model_alone(config_cls, target, refused):
    model = tiny_model("bert")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="target_modules") as error:
        get_peft_model(model, config_cls(task_type="SEQ_CLS", target_modules=target))
    assert refused in str(error.value)
    assert not any("adapter" in name for name, _ in model.named_modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("field", ["modules_to_save", "target_modules", "exclude_modules"])
def test_names_that_are_not_valid_patterns_are_refused_by_field(field):
    with pytest.raises(ValueError, match=field):
        BottleneckConfig(**{field: ["classifier", "["]})
