"""Layer pruning: a smaller model that generates, saves and reloads exactly; adapters go with their layers."""

import pytest
import torch
from conftest import CONFIGS, task_type, tiny_inputs, tiny_model
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, Qwen2Config

from peft_bottleneck import BottleneckConfig, CompacterConfig, find_layer_stacks, prune_layers


@pytest.mark.parametrize("model_type, stacks", [
    ("bert", ["bert.encoder.layer"]), ("llama", ["model.layers"]), ("gpt2", ["transformer.h"]),
    ("qwen2", ["model.layers"]), ("t5", ["encoder.block", "decoder.block"]),
    ("bart", ["model.encoder.layers", "model.decoder.layers"]), ("distilbert", ["distilbert.transformer.layer"]),
])
def test_finds_the_layer_stacks(model_type, stacks):
    assert [s.path for s in find_layer_stacks(tiny_model(model_type))] == stacks


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gpt2", "opt"])
def test_pruned_decoder_generates_with_cache_as_without_and_reloads(model_type, tmp_path):
    model = tiny_model(model_type)
    prune_layers(model, drop=[0])
    count = model.config.n_layer if model_type == "gpt2" else model.config.num_hidden_layers
    assert count == 1 and model.config.pruned_layer_map
    layer = find_layer_stacks(model)[0].layers[0]
    assert all(m.layer_idx == 0 for m in layer.modules() if isinstance(getattr(m, "layer_idx", None), int))
    inputs = tiny_inputs(model_type)
    kwargs = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        cached = model.generate(**inputs, use_cache=True, **kwargs)
        uncached = model.generate(**inputs, use_cache=False, **kwargs)
        logits = model(**inputs).logits
    assert torch.equal(cached, uncached)
    if getattr(model.config, "layer_types", None) is not None:
        assert len(model.config.layer_types) == 1
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert len(find_layer_stacks(reloaded)[0].layers) == 1
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, logits)


@pytest.mark.parametrize("stacks", [["decoder.block"], ["decoder.block", "encoder.block"]])
def test_t5_keeps_relative_position_bias_when_block_zero_goes(stacks, tmp_path):
    model = tiny_model("t5")
    for stack in stacks:
        prune_layers(model, drop=[0], stack=stack)
    inputs = tiny_inputs("t5")
    with torch.no_grad():
        logits = model(**inputs).logits
        plain = {k: v for k, v in inputs.items() if not k.startswith("decoder")}
        kwargs = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)
        assert torch.equal(model.generate(**plain, use_cache=True, **kwargs),
                           model.generate(**plain, use_cache=False, **kwargs))
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, logits)


def test_t5_encoder_below_decoder_is_refused():
    with pytest.raises(ValueError, match="Prune the decoder first"):
        prune_layers(tiny_model("t5"), drop=[0], stack="encoder.block")


@pytest.mark.parametrize("model_type", ["bert", "llama"])
def test_peft_model_prunes_with_its_adapters_and_the_adapter_refuses_an_unpruned_base(model_type, tmp_path):
    config = BottleneckConfig(task_type=task_type(model_type), init_weights=False)
    model = get_peft_model(tiny_model(model_type), config).eval()
    kept_layer = find_layer_stacks(model)[0].layers[1]
    prune_layers(model, keep=[1])
    assert find_layer_stacks(model)[0].layers[0] is kept_layer  # the adapters moved with their layer
    inputs = tiny_inputs(model_type)
    with torch.no_grad():
        expected = model(**inputs).logits
    model.save_pretrained(tmp_path)
    assert model.peft_config["default"].layer_map

    with pytest.raises(ValueError, match="layer map"):
        PeftModel.from_pretrained(tiny_model(model_type), tmp_path)

    base = prune_layers(tiny_model(model_type), keep=[1])
    loaded = PeftModel.from_pretrained(base, tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, expected)


def test_unpruned_adapter_refuses_a_pruned_base(tmp_path):
    model = get_peft_model(tiny_model("bert"), BottleneckConfig(task_type="SEQ_CLS"))
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unpruned"):
        PeftModel.from_pretrained(prune_layers(tiny_model("bert"), drop=[0]), tmp_path)


def test_t5_encoder_decoder_peft_pruning_round_trip(tmp_path):
    model = get_peft_model(tiny_model("t5"), BottleneckConfig(task_type="SEQ_2_SEQ_LM", init_weights=False)).eval()
    prune_layers(model, drop=[1], stack="decoder.block")
    inputs = tiny_inputs("t5")
    with torch.no_grad():
        expected = model(**inputs).logits
    model.save_pretrained(tmp_path)
    base = prune_layers(tiny_model("t5"), drop=[1], stack="decoder.block")
    with torch.no_grad():
        assert torch.equal(PeftModel.from_pretrained(base, tmp_path).eval()(**inputs).logits, expected)


def test_bad_requests_are_clear():
    model = tiny_model("bert")
    with pytest.raises(ValueError, match="exactly one of"):
        prune_layers(model)
    with pytest.raises(ValueError, match="out of range"):
        prune_layers(model, drop=[5])
    with pytest.raises(ValueError, match="keep at least one"):
        prune_layers(model, drop=[0, 1])
    with pytest.raises(ValueError, match="several layer stacks"):
        prune_layers(tiny_model("t5"), drop=[1])


def test_pruning_twice_composes_the_map():
    config = CONFIGS["qwen2"]().to_dict()
    config.update(num_hidden_layers=4, layer_types=None)
    model = AutoModelForCausalLM.from_config(Qwen2Config(**config)).eval()
    prune_layers(model, drop=[1])
    prune_layers(model, drop=[0])
    assert model.config.pruned_layer_map == {"model.layers": [2, 3]}
    assert model.config.num_hidden_layers == 2 and len(model.config.layer_types) == 2


def test_compacter_shared_rule_survives_pruning_its_owner_layer(tmp_path):
    config = CompacterConfig(task_type="SEQ_CLS", bottleneck_size=8, init_weights=False, phm_init_range=0.5)
    model = get_peft_model(tiny_model("bert"), config).eval()
    prune_layers(model, drop=[0])  # layer 0 registered the shared rule
    assert sum(n.endswith("phm_rule.default") for n, _ in model.named_parameters()) == 1
    inputs = tiny_inputs("bert")
    with torch.no_grad():
        expected = model(**inputs).logits
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(prune_layers(tiny_model("bert"), drop=[0]), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, expected)
