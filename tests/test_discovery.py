"""Adapter positions found from the model itself: the table cross-check, every adapter kind on every architecture of
``architectures.ARCHITECTURES`` (none of them in the table), mixture-of-experts blocks, towers, and refusals."""

from __future__ import annotations

import copy

import pytest
import torch
from architectures import (
    ARCHITECTURES,
    README,
    SUPPORTED_MODELS_PAGE,
    by_type,
    readme_with_list,
    supported_models_page,
)
from conftest import ALL_TYPES, tiny_inputs, tiny_model
from peft import PeftModel, get_peft_model
from torch import nn

import peft_bottleneck as pb
from peft_bottleneck import discovery, target_modules
from peft_bottleneck.target_modules import ADAPTER_POSITIONS

TASKS = ["t0", "t1"]
KINDS = {
    # 8 hidden units: with 2 (the default factor on a 32-wide model) a ReLU bottleneck can be dead on a tiny input
    "houlsby": lambda **kw: pb.BottleneckConfig(bottleneck_size=8, **kw),
    "pfeiffer": lambda **kw: pb.BottleneckConfig(placement="pfeiffer", bottleneck_size=8, **kw),
    "parallel": lambda **kw: pb.ParallelAdapterConfig(bottleneck_size=8, **kw),
    "compacter": lambda **kw: pb.CompacterConfig(bottleneck_size=8, **kw),
    "compacter++": lambda **kw: pb.CompacterConfig(bottleneck_size=8, placement="pfeiffer", **kw),
    "low-rank": lambda **kw: pb.LowRankConfig(**kw),
    "controller": lambda **kw: pb.AdapterControllerConfig(tasks=TASKS, adapter=pb.BottleneckConfig(
        bottleneck_size=8, init_weights=kw.pop("init_weights", True)), **kw),
    "hypernetwork": lambda **kw: pb.AdapterControllerConfig(tasks=TASKS, adapter=pb.HyperAdapterConfig(
        bottleneck_size=4, init_weights=kw.pop("init_weights", True)), **kw),
    "lm-head": lambda **kw: pb.OutputAdapterConfig(bottleneck_size=8, **kw),
}
# Swin's attention sees each example's windows as separate rows: per-example routing by name cannot tell which rows
# belong to which example there (task routing of a whole batch and one adapter per call work)
NO_PER_EXAMPLE_ROUTING = ("swin",)
ROUTED_BY_TASK = ("controller", "hypernetwork")


def first_output(output) -> torch.Tensor:
    if torch.is_tensor(output):
        return output
    if getattr(output, "text_embeds", None) is not None:  # CLIP / SigLIP: per-example, unlike the pair logits
        return output.text_embeds
    logits = getattr(output, "logits", None)
    if logits is not None:
        return logits
    return next(v for v in output.to_tuple() if torch.is_tensor(v) and v.is_floating_point())


def run(model, inputs, **route) -> torch.Tensor:
    with torch.no_grad():
        return first_output(model(**inputs, **route)).float()


def has_lm_head(model) -> bool:
    getter = getattr(model, "get_output_embeddings", None)
    return getter is not None and getter() is not None


def cases():
    for arch in ARCHITECTURES:
        for kind in KINDS:
            yield pytest.param(arch.model_type, kind, id=f"{arch.model_type}-{kind}")


@pytest.mark.parametrize("model_type, kind", list(cases()))
def test_every_kind_on_every_discovered_architecture(model_type, kind, tmp_path, monkeypatch):
    arch = by_type(model_type)
    monkeypatch.delitem(ADAPTER_POSITIONS, model_type, raising=False)  # discovery alone places these adapters
    base = arch.model()
    if kind == "lm-head" and not has_lm_head(base):
        pytest.skip("no output embeddings: the LM-head adapter needs a language-model head")
    if kind == "hypernetwork" and model_type == "swin":
        pytest.skip("Swin's stages have different widths; one hypernetwork generates one size (refused by name)")
    inputs = arch.inputs(3)
    reference = run(base, inputs)
    route = {"task": "t0"} if kind in ROUTED_BY_TASK else {}
    extra = {"task_type": arch.task_type} if arch.task_type else {}

    # identity at init, with default targets
    model = get_peft_model(copy.deepcopy(base), KINDS[kind](**extra))
    layers = [m for m in model.modules() if isinstance(m, pb.AdapterLayer)]
    assert layers
    assert torch.allclose(run(model, inputs, **route), reference, atol=1e-6)

    # a perturbed adapter changes the output; gradients reach every adapter tensor
    torch.manual_seed(1)
    model = get_peft_model(copy.deepcopy(base), KINDS[kind](init_weights=False, **extra), adapter_name="a")
    perturbed = run(model, inputs, **route)
    assert not torch.allclose(perturbed, reference, atol=1e-4)
    first_output(model(**inputs, **route)).float().pow(2).mean().backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad and "modules_to_save" not in n
                 and not any(h in n for h in ("classifier", "score", "score.", "projector"))}
    assert trainable
    silent = [n for n, p in trainable.items() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not silent, silent
    model.zero_grad()

    # save / reload exact
    model.save_pretrained(tmp_path / "saved")
    reloaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "saved" / "a" if (
        tmp_path / "saved" / "a").exists() else tmp_path / "saved", adapter_name="a")
    assert torch.allclose(run(reloaded, inputs, **route), perturbed, rtol=0, atol=1e-6)  # Whisper: 6e-8 apart

    # routed per example: mixed adapter_names (or tasks) equal the same examples one by one
    model.eval()
    if model_type in NO_PER_EXAMPLE_ROUTING:
        return
    if kind in ROUTED_BY_TASK:
        mixed = run(model, inputs, task=["t0", "t1", "t0"])
        alone = [run(model, _row(inputs, i), task=t) for i, t in enumerate(["t0", "t1", "t0"])]
    else:
        torch.manual_seed(2)
        model.add_adapter("b", KINDS[kind](init_weights=False, **extra))
        names = ["a", "b", pb.BASE_ROUTE]
        mixed = run(model, inputs, adapter_names=names)
        alone = []
        for i, name in enumerate(names):
            if name == pb.BASE_ROUTE:
                with model.disable_adapter():
                    alone.append(run(model, _row(inputs, i)))
            else:
                model.set_adapter(name)
                alone.append(run(model, _row(inputs, i)))
    assert torch.allclose(mixed, torch.cat(alone), atol=1e-5)


def _row(inputs: dict, i: int) -> dict:
    return {k: v[i:i + 1] if torch.is_tensor(v) and v.dim() > 0 else v for k, v in inputs.items()}


# -- the table as a cross-check -----------------------------------------------------------------------------------

CROSS_CHECK_KINDS = {
    # random adapters with the settings that read the block's wiring: equal outputs need the same targets, the same
    # residual, the same LayerNorm and the same parallel input
    "houlsby": lambda: pb.BottleneckConfig(init_weights=False),
    "pfeiffer": lambda: pb.BottleneckConfig(placement="pfeiffer", init_weights=False),
    "houlsby-skip-block": lambda: pb.BottleneckConfig(init_weights=False, original_ln_before=True,
                                                      original_ln_after=False),
    "parallel": lambda: pb.ParallelAdapterConfig(init_weights=False),
}


def _table_model(model_type: str):
    """A tiny model of a table type: conftest's, or for the three it lacks, one built here."""
    import transformers as tf

    if model_type in ALL_TYPES:
        return tiny_model(model_type), tiny_inputs(model_type)
    if model_type == "gemma2":
        arch = by_type("gemma2")
        return arch.model(), arch.inputs(3)
    torch.manual_seed(0)
    if model_type == "mt5":
        model = tf.MT5ForConditionalGeneration(tf.MT5Config(
            num_layers=2, num_decoder_layers=2, d_model=32, d_ff=64, num_heads=4, d_kv=8, vocab_size=64,
            decoder_start_token_id=0, pad_token_id=0))
    else:
        model = tf.MBartForConditionalGeneration(tf.MBartConfig(
            encoder_layers=2, decoder_layers=2, d_model=32, encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=64, max_position_embeddings=64, pad_token_id=0,
            decoder_start_token_id=2))
    return model.eval(), tiny_inputs("t5")


@pytest.mark.parametrize("model_type", sorted(ADAPTER_POSITIONS))
@pytest.mark.parametrize("kind", list(CROSS_CHECK_KINDS))
def test_discovery_alone_finds_the_table_positions(model_type, kind, monkeypatch):
    base, inputs = _table_model(model_type)
    torch.manual_seed(3)
    try:
        by_table = get_peft_model(copy.deepcopy(base), CROSS_CHECK_KINDS[kind]())
    except ValueError:  # the table names no residual for this setting (Gemma 2): discovery must refuse it too
        monkeypatch.delitem(ADAPTER_POSITIONS, model_type)
        with pytest.raises(ValueError, match="residual input and LayerNorm"):
            get_peft_model(copy.deepcopy(base), CROSS_CHECK_KINDS[kind]())
        return
    monkeypatch.delitem(ADAPTER_POSITIONS, model_type)
    torch.manual_seed(3)
    by_discovery = get_peft_model(copy.deepcopy(base), CROSS_CHECK_KINDS[kind]())
    assert sorted(by_discovery.base_model.targeted_module_names) == sorted(by_table.base_model.targeted_module_names)
    assert by_discovery.peft_config["default"].original_ln_before == by_table.peft_config["default"].original_ln_before
    assert torch.equal(run(by_discovery, inputs), run(by_table, inputs))


def test_discovery_matches_the_table_names_on_bert():
    found = discovery.discover(tiny_model("bert")).positions()
    layer = "bert.encoder.layer.0."
    assert found.sites[layer + "attention.output.dense"] == target_modules.BlockSite(
        (layer + "attention.output", (1, "")), layer + "attention.output.LayerNorm")
    assert found.ffn_input_from[layer + "output.dense"] == layer + "intermediate"


# -- wirings, mixture of experts, towers ----------------------------------------------------------------------------


@pytest.mark.parametrize("model_type, sited", [("olmo2", False), ("gemma3_text", False), ("granite", False),
                                               ("beit", False), ("cohere", True), ("gptj", True),
                                               ("falcon", True), ("modernbert", True), ("whisper", True)])
def test_sites_only_where_the_branch_is_added_unchanged(model_type, sited):
    # sandwich norms (OLMo 2, Gemma 3), a residual multiplier (Granite), a layer scale (BEiT): no residual site,
    # so AdapterHub's Pfeiffer preset (original_ln_before) is not applied there
    found = discovery.discover(by_type(model_type).model()).positions()
    assert bool(found.sites) == sited
    model = get_peft_model(by_type(model_type).model(), pb.BottleneckConfig(placement="pfeiffer"))
    assert model.peft_config["default"].original_ln_before == sited


def test_parallel_residual_blocks_read_the_block_input():
    # GPT-J: y = x + attn(ln(x)) + mlp(ln(x)); both branches found at one sum, the parallel adapter reads ln_1's input
    found = discovery.discover(by_type("gptj").model()).positions()
    assert found.attention_output == ("transformer.h.0.attn.out_proj", "transformer.h.1.attn.out_proj")
    assert found.ffn_input_from["transformer.h.0.mlp"] == "transformer.h.0.ln_1"


@pytest.mark.parametrize("model_type", ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe"])
def test_moe_blocks_take_adapters_sized_from_the_hidden_size(model_type):
    arch = by_type(model_type)
    base = arch.model()
    router_before = {n: p.clone() for n, p in base.named_parameters() if "gate" in n}
    model = get_peft_model(copy.deepcopy(base), pb.ParallelAdapterConfig(task_type="CAUSAL_LM"))
    blocks = [m for n, m in model.named_modules() if isinstance(m, pb.AdapterLayer) and n.endswith(".mlp")]
    assert len(blocks) == 2
    assert all(b.in_features == b.out_features == 32 for b in blocks)
    model = get_peft_model(copy.deepcopy(base), pb.BottleneckConfig(task_type="CAUSAL_LM", placement="pfeiffer"))
    moe = [m for n, m in model.named_modules() if isinstance(m, pb.AdapterLayer) and n.endswith(".mlp")]
    assert len(moe) == 2 and moe[0].bottleneck_up_weight["default"].shape[1] == 32
    after = dict(model.base_model.model.named_parameters())
    assert all(torch.equal(after[n.replace(".mlp.", ".mlp.base_layer.")] if n.replace(".mlp.", ".mlp.base_layer.")
                           in after else after[n], p) for n, p in router_before.items())


def test_moe_shared_expert_can_be_targeted():
    arch = by_type("qwen2_moe")
    base = arch.model()
    inputs = arch.inputs(2)
    model = get_peft_model(copy.deepcopy(base), pb.BottleneckConfig(target_modules=["shared_expert"],
                                                                     init_weights=False, task_type="CAUSAL_LM"))
    assert sorted(model.base_model.targeted_module_names) == [f"model.layers.{i}.mlp.shared_expert"
                                                              for i in range(2)]
    assert not torch.allclose(run(model, inputs), run(base, inputs))


def test_moe_block_under_routed_paths():
    arch = by_type("mixtral")
    base = arch.model()
    inputs = arch.inputs(2)
    model = get_peft_model(copy.deepcopy(base), pb.AdapterControllerConfig(
        tasks=TASKS, adapter=pb.BottleneckConfig(placement="pfeiffer", init_weights=False), task_type="CAUSAL_LM"))
    mixed = run(model, inputs, task=["t1", "t0"])
    assert torch.allclose(mixed, torch.cat([run(model, _row(inputs, 0), task="t1"),
                                            run(model, _row(inputs, 1), task="t0")]), atol=1e-5)


@pytest.mark.parametrize("towers, expected", [
    (None, {"language_model"}), ("vision", {"vision_tower"}), (["text", "vision"], {"language_model", "vision_tower"}),
    ("all", {"language_model", "vision_tower"}),
])
def test_vision_language_models_adapt_the_language_model_by_default(towers, expected):
    model = get_peft_model(by_type("llava").model(), pb.BottleneckConfig(towers=towers))
    assert {n.split(".")[1] for n in model.base_model.targeted_module_names} == expected


def test_encoder_decoders_adapt_both_stacks_and_cross_attention():
    model = get_peft_model(by_type("whisper").model(), pb.BottleneckConfig())
    names = model.base_model.targeted_module_names
    assert sum(".encoder.layers." in n for n in names) == 4
    assert sum("encoder_attn.out_proj" in n for n in names) == 2
    model = get_peft_model(by_type("whisper").model(), pb.BottleneckConfig(towers="audio"))
    assert all(".encoder." in n for n in model.base_model.targeted_module_names)


def test_towers_values_are_checked():
    with pytest.raises(ValueError, match="`towers` must be one of"):
        pb.BottleneckConfig(towers="images")
    with pytest.raises(ValueError, match="selects no blocks"):
        get_peft_model(by_type("mixtral").model(), pb.BottleneckConfig(towers="vision"))


# -- refusals and explicit targets --------------------------------------------------------------------------------


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


@pytest.mark.parametrize("model", [TinyCNN(), nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))])
def test_models_without_transformer_blocks_are_refused_unless_targets_are_given(model):
    with pytest.raises(ValueError, match="Could not find transformer blocks.*target_modules"):
        get_peft_model(copy.deepcopy(model), pb.BottleneckConfig())
    target = "head" if isinstance(model, TinyCNN) else "2"
    peft_model = get_peft_model(copy.deepcopy(model), pb.ParallelAdapterConfig(target_modules=[target],
                                                                               bottleneck_size=2))
    x = torch.randn(2, 3, 8, 8) if isinstance(model, TinyCNN) else torch.randn(2, 8)
    assert torch.equal(peft_model(x), model(x))


def test_a_transformer_config_without_blocks_names_the_model_type():
    class NoBlocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("Config", (), {"model_type": "my-arch"})()
            self.proj = nn.Linear(4, 4)

        def forward(self, input_ids=None):
            return self.proj(torch.zeros(1, 4))

    with pytest.raises(ValueError, match="model_type='my-arch'.*register_positions"):
        get_peft_model(NoBlocks(), pb.BottleneckConfig())


def test_register_positions_overrides_discovery(monkeypatch):
    monkeypatch.setattr(target_modules, "ADAPTER_POSITIONS", dict(ADAPTER_POSITIONS))
    from peft_bottleneck.tuners.base import model as tuner_model

    monkeypatch.setattr(tuner_model, "ADAPTER_POSITIONS", target_modules.ADAPTER_POSITIONS)
    pb.register_positions("mixtral", target_modules.AdapterPositions(
        attention_output=("self_attn.o_proj",), ffn_output=(), ffn_block=()))
    model = get_peft_model(by_type("mixtral").model(), pb.BottleneckConfig())
    assert sorted(model.base_model.targeted_module_names) == [f"model.layers.{i}.self_attn.o_proj" for i in range(2)]
    with pytest.raises(TypeError, match="AdapterPositions"):
        pb.register_positions("x", {"ffn_output": ["fc2"]})


def test_probe_leaves_the_model_and_random_state_alone():
    model = by_type("olmo2").model().train()
    state = torch.random.get_rng_state()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    discovery.discover(model)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_supported_models_page_is_generated_from_the_tables():
    assert SUPPORTED_MODELS_PAGE.read_text() == supported_models_page(ADAPTER_POSITIONS), (
        "docs/supported-models.md is stale: run `python tests/architectures.py --write`")
    readme = README.read_text()
    assert readme == readme_with_list(readme, ADAPTER_POSITIONS), (
        "README.md's list of model types is stale: run `python tests/architectures.py --write`")
    assert len(set(ALL_TYPES) | {a.model_type for a in ARCHITECTURES}) >= 45
