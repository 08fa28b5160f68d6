"""Compacter specifics: closed-form parameter counts, a shared rule saved once, PHM errors and inits."""

import copy
import os

import pytest
import torch
from conftest import tiny_inputs, tiny_model
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import BertConfig, BertModel

from peft_bottleneck import CompacterConfig, CompacterLayer, CompacterModel

D, K, MODULES = 32, 8, 4  # tiny BERT: hidden 32, bottleneck 8, Houlsby = 2 layers x 2 positions


def bare_bert():
    torch.manual_seed(0)
    return BertModel(BertConfig(num_hidden_layers=2, hidden_size=D, num_attention_heads=4, intermediate_size=64,
                                vocab_size=64), add_pooling_layer=False)


def closed_form(n, rank, shared, factorized, bias=True):
    per_projection = rank * (D + K) if factorized else D * K // n
    per_module = 2 * per_projection + ((K + D) if bias else 0) + (0 if shared else 2 * n**3)
    return MODULES * per_module + (n**3 if shared else 0)


@pytest.mark.parametrize("n", [2, 4, 8])
@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("factorized", [True, False])
def test_parameter_count_equals_closed_form(n, rank, shared, factorized):
    config = CompacterConfig(bottleneck_size=K, phm_dim=n, phm_rank=rank, shared_phm_rule=shared,
                             factorized_phm_W=factorized)
    model = get_peft_model(bare_bert(), config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == closed_form(n, rank, shared, factorized)


def test_paper_formula_without_biases():
    # Mahabadi et al.: Compacter has 4L(k + d) + n^3 parameters (rank 1, shared rule, no biases), L = layers
    model = get_peft_model(bare_bert(), CompacterConfig(bottleneck_size=K, phm_bias=False, init_weights="adapterhub"))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 4 * 2 * (K + D) + 4**3
    # our recipe's rank 8: 4 r L(k + d) + n^3
    model = get_peft_model(bare_bert(), CompacterConfig(bottleneck_size=K, phm_bias=False))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 4 * 8 * 2 * (K + D) + 4**3


def test_shared_rule_is_one_parameter_and_stored_once(tmp_path):
    model = get_peft_model(bare_bert(), CompacterConfig(bottleneck_size=K, init_weights=False))
    layers = [m for m in model.modules() if isinstance(m, CompacterLayer)]
    assert len({id(layer.tensors_of("default")["phm_rule"]) for layer in layers}) == 1
    assert sum(n.endswith("phm_rule.default") for n, _ in model.named_parameters()) == 1  # registered once
    model.save_pretrained(tmp_path)
    saved = load_file(os.path.join(tmp_path, "adapter_model.safetensors"))
    assert sum("compacter_phm_rule" in key for key in saved) == 1
    n_saved = sum(t.numel() for t in saved.values())
    assert n_saved == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_unshared_rules_are_stored_per_layer(tmp_path):
    model = get_peft_model(bare_bert(), CompacterConfig(bottleneck_size=K, shared_phm_rule=False))
    model.save_pretrained(tmp_path)
    saved = load_file(os.path.join(tmp_path, "adapter_model.safetensors"))
    assert sum("compacter_phm_rule" in key for key in saved) == MODULES


@pytest.mark.parametrize("shared", [True, False])
def test_round_trip_after_training_keeps_the_rule_shared(shared, tmp_path):
    inputs = tiny_inputs("bert")
    model = get_peft_model(tiny_model("bert"), CompacterConfig(task_type="SEQ_CLS", bottleneck_size=K,
                                                               shared_phm_rule=shared, phm_init_range=0.1))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for _ in range(3):
        model(**inputs, labels=torch.tensor([0, 1, 0])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        expected = model(**inputs).logits
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_model("bert"), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, expected)
    if shared:
        rules = {id(m.tensors_of("default")["phm_rule"]) for m in loaded.modules() if isinstance(m, CompacterLayer)}
        assert len(rules) == 1

    base = tiny_model("bert").eval()
    base.load_adapter(tmp_path)  # transformers' integration
    with torch.no_grad():
        assert torch.equal(base(**inputs).logits, expected)
    if shared:
        rules = {id(m.tensors_of("default")["phm_rule"]) for m in base.modules() if isinstance(m, CompacterLayer)}
        assert len(rules) == 1


def test_learn_phm_false_freezes_but_saves_the_rule(tmp_path):
    model = get_peft_model(bare_bert(), CompacterConfig(bottleneck_size=K, learn_phm=False))
    rule = next(m for m in model.modules() if isinstance(m, CompacterLayer)).tensors_of("default")["phm_rule"]
    assert not rule.requires_grad
    model.save_pretrained(tmp_path)
    assert any("compacter_phm_rule" in k for k in load_file(tmp_path / "adapter_model.safetensors"))


def test_indivisible_bottleneck_names_both_numbers():
    with pytest.raises(ValueError, match=r"`phm_dim`=4.*bottleneck_size=6"):
        get_peft_model(bare_bert(), CompacterConfig(bottleneck_size=6))
    with pytest.raises(ValueError, match=r"`phm_dim`=3.*hidden_size=32"):
        get_peft_model(bare_bert(), CompacterConfig(bottleneck_size=9, phm_dim=3))


@pytest.mark.parametrize("kwargs, field", [
    (dict(phm_dim=0), "phm_dim"), (dict(phm_rank=0), "phm_rank"), (dict(phm_c_init="xavier"), "phm_c_init"),
    (dict(phm_init_range=0), "phm_init_range"), (dict(init_weights="bert"), "init_weights"),
])
def test_bad_phm_config(kwargs, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        CompacterConfig(**kwargs)


def test_adapterhub_init_follows_the_paper():
    config = CompacterConfig(init_weights="adapterhub")
    assert (config.phm_dim, config.reduction_factor, config.shared_phm_rule, config.factorized_phm_W,
            config.phm_rank, config.non_linearity, config.placement) == (4, 32, True, True, 1, "gelu", "houlsby")
    assert config.peft_type.value == "COMPACTER" and CompacterModel.prefix == "compacter_"


def test_the_default_init_is_our_recipe_and_adapterhubs_preset_is_one_field_away(tmp_path):
    default, preset = CompacterConfig(), CompacterConfig(init_weights="adapterhub")
    assert (default.init_weights, default.phm_init_range, default.phm_rank) == (True, 0.1, 8)
    assert CompacterConfig(placement="pfeiffer").phm_rank == 4  # Compacter++: rank 4 won on one task only
    assert (preset.phm_init_range, preset.phm_rank, preset.phm_c_init, preset.hypercomplex_nonlinearity) == (
        1e-4, 1, "normal", "glorot-uniform")
    differ = {f for f in default.to_dict() if getattr(default, f) != getattr(preset, f)}
    assert differ == {"init_weights", "phm_init_range", "phm_rank"}
    given = CompacterConfig(init_weights="adapterhub", phm_init_range=0.5, phm_rank=2)  # what is given wins
    assert (given.phm_init_range, given.phm_rank) == (0.5, 2)
    # the rule really is drawn at that scale, and the recipe is still the identity at the start
    model = get_peft_model(bare_bert(), CompacterConfig(bottleneck_size=K)).eval()
    rule = next(p for n, p in model.named_parameters() if "phm_rule" in n)
    assert 0.05 < rule.std().item() < 0.2
    inputs = tiny_inputs("bert")
    with torch.no_grad():
        with model.disable_adapter():
            base = model(**inputs).last_hidden_state
        assert torch.equal(model(**inputs).last_hidden_state, base)
    model.save_pretrained(tmp_path)  # the resolved scale is saved, so a reload does not depend on today's default
    saved = CompacterConfig.from_pretrained(tmp_path)
    assert (saved.phm_init_range, saved.phm_rank) == (0.1, 8)


def test_compacter_plus_plus_is_feed_forward_only():
    model = get_peft_model(bare_bert(), CompacterConfig(bottleneck_size=K, placement="pfeiffer"))
    assert sorted(model.base_model.targeted_module_names) == [f"encoder.layer.{i}.output.dense" for i in range(2)]


def test_second_adapter_gets_its_own_shared_rule_and_delete_drops_it():
    model = get_peft_model(bare_bert(), CompacterConfig(bottleneck_size=K))
    model.add_adapter("other", CompacterConfig(bottleneck_size=K))
    layer = next(m for m in model.modules() if isinstance(m, CompacterLayer))
    assert layer.tensors_of("default")["phm_rule"] is not layer.tensors_of("other")["phm_rule"]
    model.delete_adapter("other")
    assert all("other" not in getattr(m, "compacter_phm_rule", {}) and not any(name == "other" for _, name in m.shared_refs)
               for m in model.modules() if isinstance(m, CompacterLayer))


def test_bf16_model_keeps_one_shared_rule():
    base = tiny_model("llama").to(torch.bfloat16)
    inputs = tiny_inputs("llama")
    with torch.no_grad():
        reference = base(**inputs).logits
    model = get_peft_model(base, CompacterConfig(task_type="CAUSAL_LM", bottleneck_size=K))
    layers = [m for m in model.modules() if isinstance(m, CompacterLayer)]
    assert len({id(layer.tensors_of("default")["phm_rule"]) for layer in layers}) == 1
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reference)
    model.train()
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    assert layers[0].tensors_of("default")["phm_rule"].grad is not None


def test_mixed_batch_routing_with_compacter():
    model = get_peft_model(tiny_model("bert"), CompacterConfig(task_type="SEQ_CLS", bottleneck_size=K,
                                                               init_weights=False, phm_init_range=0.5))
    model.add_adapter("other", CompacterConfig(task_type="SEQ_CLS", bottleneck_size=4, init_weights=False,
                                               phm_init_range=0.5))
    model.eval()
    inputs = tiny_inputs("bert", batch=3)
    names = ["other", "__base__", "default"]
    with torch.no_grad():
        mixed = model(**inputs, adapter_names=names).logits
        rows = []
        for i, name in enumerate(names):
            single = {k: v[i : i + 1] for k, v in inputs.items()}
            if name == "__base__":
                with model.disable_adapter():
                    rows.append(model(**single).logits)
            else:
                model.set_adapter(name)
                rows.append(model(**single).logits)
    assert torch.allclose(mixed, torch.cat(rows), atol=1e-5)


def test_deepcopy_keeps_sharing():
    model = get_peft_model(bare_bert(), CompacterConfig(bottleneck_size=K))
    clone = copy.deepcopy(model)
    layers = [m for m in clone.modules() if isinstance(m, CompacterLayer)]
    assert len({id(layer.tensors_of("default")["phm_rule"]) for layer in layers}) == 1
