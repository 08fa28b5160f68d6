"""The adapted layer computes AdapterHub's bottleneck block: every wiring field, checked against a direct
computation written from AdapterHub's definition (``pre_forward`` / ``forward`` / ``post_forward``) on a post-LN
encoder (BERT) and a pre-LN decoder (Llama)."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_inputs, tiny_model
from peft import get_peft_model

from peft_bottleneck import BottleneckConfig, CompacterConfig, ParallelAdapterConfig

ACT = {"relu": F.relu, "swish": F.silu, "gelu": F.gelu, "tanh": torch.tanh}


def raw(layer, name="default"):
    """An adapter's tensors (route 0), read straight from the layer's containers."""
    return {k: v[0] for k, v in layer.tensors_of(name).items()}


def reference_block(h, x, layer_norm, t, config, is_parallel=False, source=None):
    """AdapterHub's computation of the block output, from its definition; ``x`` the block's residual input,
    ``layer_norm`` the block's LayerNorm (None in pre-LN models, where the model adds ``x`` itself)."""
    residual = h if config.residual_before_ln is True else None
    if is_parallel:
        a_in = source
    elif config.original_ln_before:
        added = h + x
        if config.residual_before_ln == "post_add":
            residual = added
        a_in = layer_norm(added) if layer_norm is not None else added
    else:
        a_in = h
    if config.residual_before_ln is False:
        residual = a_in
    z = F.layer_norm(a_in, a_in.shape[-1:], t["ln_before_weight"], t["ln_before_bias"]) if config.ln_before else a_in
    up = F.linear(ACT[config.non_linearity](F.linear(z, t["down_weight"], t["down_bias"])), t["up_weight"], t["up_bias"])
    scale = t["scale"] if "scale" in t else config.scaling
    out = up * scale
    if config.use_gating:
        gate = torch.sigmoid(F.linear(a_in, t["gate_weight"], t["gate_bias"]))
        out = out * gate.mean(dim=1, keepdim=True)
    ln_after = (lambda v: F.layer_norm(v, v.shape[-1:], t["ln_after_weight"], t["ln_after_bias"]))
    if is_parallel:
        out = h + (ln_after(out) if config.ln_after else out)
    elif config.ln_after and config.adapter_residual_before_ln:
        out = ln_after(out + residual)
    elif config.ln_after:
        out = ln_after(out) + residual
    else:
        out = out + residual
    if config.original_ln_after:
        return layer_norm(out + x) if layer_norm is not None else out + x
    return out


def randomize_extras(model):
    """Non-trivial layer norms, scales and gates (their inits are ones / zeros)."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(k in name for k in ("_scale.", "_gate_", "_ln_before_", "_ln_after_")):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5 + (1.0 if "weight" in name and "ln" in name
                                                                            else 0.0))


WIRINGS = [
    dict(original_ln_before=True),  # seq_bn
    dict(original_ln_before=True, residual_before_ln="post_add"),
    dict(original_ln_before=True, residual_before_ln=False),
    dict(original_ln_after=False),
    dict(original_ln_before=True, original_ln_after=False, residual_before_ln=False),
    dict(ln_before=True, ln_after=True),
    dict(ln_after=True, adapter_residual_before_ln=True),
    dict(scaling="learned", use_gating=True),
    dict(scaling="channel", original_ln_before=True, ln_after=True),
    dict(scaling=0.5, non_linearity="tanh"),
]


def bert_ffn_block(model):
    block = model.base_model.model.bert.encoder.layer[0]
    return block, block.output, block.output.dense


@pytest.mark.parametrize("wiring", WIRINGS, ids=lambda w: ",".join(f"{k}={v}" for k, v in w.items()))
def test_post_ln_block_matches_adapterhub_definition(wiring):
    config = BottleneckConfig(task_type="SEQ_CLS", placement="pfeiffer", init_weights=False, bottleneck_size=5,
                              **{"original_ln_before": False, **wiring})
    model = get_peft_model(tiny_model("bert"), config).eval()
    randomize_extras(model)
    block, output, dense = bert_ffn_block(model)
    x = torch.randn(2, 5, 32)  # the residual input: the attention output
    intermediate = block.intermediate(x)
    with torch.no_grad():
        got = output(intermediate, x)
        expected = reference_block(dense.base_layer(intermediate), x, output.LayerNorm, raw(dense), config)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("wiring", WIRINGS, ids=lambda w: ",".join(f"{k}={v}" for k, v in w.items()))
def test_pre_ln_block_matches_adapterhub_definition(wiring):
    config = BottleneckConfig(task_type="CAUSAL_LM", placement="pfeiffer", init_weights=False, bottleneck_size=5,
                              **{"original_ln_before": False, **wiring})
    model = get_peft_model(tiny_model("llama"), config).eval()
    randomize_extras(model)
    layer = model.base_model.model.model.layers[0]
    hidden = torch.randn(2, 5, 32)  # the decoder layer's residual stream after attention
    captured = {}
    handle = layer.mlp.down_proj.base_layer.register_forward_hook(lambda m, a, o: captured.update(h=o))
    with torch.no_grad():
        got = hidden + layer.mlp(layer.post_attention_layernorm(hidden))  # what the decoder layer computes
        handle.remove()
        expected = reference_block(captured["h"], hidden, None, raw(layer.mlp.down_proj), config)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_parallel_adapter_reads_the_residual_stream_in_pre_ln_decoders():
    model = get_peft_model(tiny_model("llama"), ParallelAdapterConfig(task_type="CAUSAL_LM", init_weights=False))
    assert model.peft_config["default"].input_from == {"mlp": "post_attention_layernorm"}
    layer = model.base_model.model.model.layers[0]
    hidden = torch.randn(2, 5, 32)
    with torch.no_grad():
        normed = layer.post_attention_layernorm(hidden)
        got = layer.mlp(normed)
        t = raw(layer.mlp)
        expected = layer.mlp.base_layer(normed) + 4.0 * F.linear(
            F.relu(F.linear(hidden, t["down_weight"], t["down_bias"])), t["up_weight"], t["up_bias"])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_pfeiffer_preset_is_seq_bn_at_the_default_positions_only():
    default = get_peft_model(tiny_model("bert"), BottleneckConfig(task_type="SEQ_CLS", placement="pfeiffer"))
    assert default.peft_config["default"].original_ln_before is True
    explicit = get_peft_model(tiny_model("bert"), BottleneckConfig(
        task_type="SEQ_CLS", placement="pfeiffer", target_modules=["output.dense"],
        exclude_modules=["attention.output.dense"]))
    assert explicit.peft_config["default"].original_ln_before is False  # documented: pass True yourself
    houlsby = get_peft_model(tiny_model("bert"), BottleneckConfig(task_type="SEQ_CLS"))
    assert houlsby.peft_config["default"].original_ln_before is False


def test_dropout_is_on_the_scaled_output_as_in_adapterhub():
    config = BottleneckConfig(task_type="SEQ_CLS", init_weights=False, adapter_dropout=0.5, bottleneck_size=4,
                              scaling=2.0)
    model = get_peft_model(tiny_model("bert"), config)
    dense = model.base_model.model.bert.encoder.layer[0].output.dense
    dense.train()
    x = torch.randn(3, 7, 64)
    h = dense.base_layer(x)
    torch.manual_seed(5)
    got = dense(x)
    t = raw(dense)
    up = F.linear(F.silu(F.linear(h, t["down_weight"], t["down_bias"])), t["up_weight"], t["up_bias"])
    torch.manual_seed(5)
    expected = h + F.dropout(2.0 * up, 0.5, True)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type, make", [
    ("bert", lambda: BottleneckConfig(task_type="SEQ_CLS", init_weights=False)),
    ("bert", lambda: ParallelAdapterConfig(task_type="SEQ_CLS", init_weights=False)),
    ("bert", lambda: CompacterConfig(task_type="SEQ_CLS", init_weights=False, bottleneck_size=8)),
    ("llama", lambda: CompacterConfig(task_type="CAUSAL_LM", init_weights=False, bottleneck_size=8,
                                      placement="pfeiffer")),
])
def test_random_test_init_moves_outputs_by_a_clear_margin(model_type, make):
    base = tiny_model(model_type)
    inputs = tiny_inputs(model_type)
    with torch.no_grad():
        reference = base(**inputs).logits
        adapted = get_peft_model(base, make())(**inputs).logits
    assert (adapted - reference).abs().max() > 0.05 * reference.abs().max()


def test_every_wiring_combination_builds_or_is_refused_by_name():
    fields = dict(original_ln_before=[True, False], original_ln_after=[True, False],
                  residual_before_ln=[True, False, "post_add"], ln_after=[True, False])
    for values in itertools.product(*fields.values()):
        kwargs = dict(zip(fields, values))
        try:
            config = BottleneckConfig(task_type="SEQ_CLS", placement="pfeiffer", **kwargs)
        except ValueError as error:
            assert "residual_before_ln" in str(error)
            continue
        model = get_peft_model(tiny_model("bert"), config).eval()
        with torch.no_grad():
            assert torch.isfinite(model(**tiny_inputs("bert")).logits).all()


def test_tensors_of_reads_what_the_parameter_dicts_hold():
    """``tensors_of`` reads ParameterDict entries through ``_parameters`` (a plain dict, for speed): pins that torch
    keeps every entry there under its own key, and that a replaced entry is what is read."""
    model = get_peft_model(tiny_model("bert"), BottleneckConfig(task_type="SEQ_CLS", use_gating=True))
    model.add_adapter("other-name", BottleneckConfig(task_type="SEQ_CLS", ln_after=True))
    layer = next(m for m in model.modules() if hasattr(m, "tensors_of"))
    for name in layer.settings:
        expected = {c[len(layer.prefix):]: getattr(layer, c)[name] for c in layer.adapter_layer_names
                    if name in getattr(layer, c)}
        got = layer.tensors_of(name)
        assert got.keys() == expected.keys() and all(got[k] is expected[k] for k in got)
    container = getattr(layer, layer.prefix + "down_weight")
    container["default"] = torch.nn.Parameter(container["default"].detach().clone())
    assert layer.tensors_of("default")["down_weight"] is container["default"]
    container["plain"] = torch.zeros(2)  # a plain tensor is stored as a Parameter under its key
    assert layer.tensors_of("plain")["down_weight"] is container["plain"]
