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


# -- writing onto the wrapped module's output (inference only) -----------------------------------------------------

def _record_base_outputs(layer):
    """The wrapped module's outputs, each with a copy taken as it returned, recorded by wrapping its ``forward``
    (not by a hook: a forward hook is exactly what makes the adapters copy the output instead)."""
    base, records = layer.base_layer, []
    forward = base.forward

    def recorded(*args, **kwargs):
        out = forward(*args, **kwargs)
        records.append((out, out.clone()))
        return out

    base.forward = recorded
    return records


def _houlsby_bert(**config):
    model = get_peft_model(tiny_model("bert"), BottleneckConfig(task_type="SEQ_CLS", init_weights=False, **config))
    model.add_adapter("other", BottleneckConfig(task_type="SEQ_CLS", init_weights=False, **config))
    return model.eval()


def _first_adapted_layer(model):
    return model.base_model.model.bert.encoder.layer[0].attention.output.dense


def test_without_gradients_the_adapter_writes_onto_the_modules_own_output():
    model = _houlsby_bert()
    layer = _first_adapted_layer(model)
    x = torch.randn(3, 6, layer.in_features)
    with torch.enable_grad():
        copied = layer(x)  # gradients on: the output is copied first
    records = _record_base_outputs(layer)
    with torch.inference_mode():
        written = layer(x)
    (base_out, base_copy), = records
    assert written.data_ptr() == base_out.data_ptr()  # no new output
    assert not torch.equal(base_copy, written)  # the adapter did change it
    assert torch.equal(written, copied)  # the same arithmetic in the same order


def test_with_gradients_the_modules_output_is_left_as_it_returned():
    layer = _first_adapted_layer(_houlsby_bert())
    records = _record_base_outputs(layer)
    out = layer(torch.randn(3, 6, layer.in_features))
    (base_out, base_copy), = records
    assert out.data_ptr() != base_out.data_ptr() and torch.equal(base_out, base_copy)


@pytest.mark.parametrize("where", ["on the module", "on every module"])
def test_a_forward_hook_sees_the_modules_output_unchanged(where):
    """A hook that keeps the wrapped module's output (activation capture) must keep what the module returned; we
    rely on torch keeping global hooks in ``torch.nn.modules.module._global_forward_hooks``."""
    layer = _first_adapted_layer(_houlsby_bert())
    captured = []
    keep = lambda module, args, output: captured.append((output, output.clone()))  # noqa: E731
    if where == "on the module":
        handle = layer.base_layer.register_forward_hook(keep)
    else:
        handle = torch.nn.modules.module.register_module_forward_hook(
            lambda module, args, output: keep(module, args, output) if module is layer.base_layer else None)
        assert torch.nn.modules.module._global_forward_hooks  # what the layer reads
    try:
        with torch.inference_mode():
            out = layer(torch.randn(3, 6, layer.in_features))
    finally:
        handle.remove()
    (kept, copy), = captured
    assert torch.equal(kept, copy) and out.data_ptr() != kept.data_ptr()


class _Passthrough(torch.nn.Linear):
    """A projection whose output is its input: the adapter must not write onto the caller's tensor."""

    def forward(self, x):
        return x


class _FromCache(torch.nn.Linear):
    """A projection whose output is a slice of a buffer it keeps (as a cache would)."""

    def __init__(self, features):
        super().__init__(features, features)
        self.register_buffer("cache", torch.randn(4, 3, 6, features))

    def forward(self, x):
        return self.cache[1]


@pytest.mark.parametrize("module", [_Passthrough, _FromCache])
def test_outputs_that_are_not_the_modules_own_are_copied(module):
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = module(8, 8) if module is _Passthrough else module(8)

        def forward(self, x):
            return self.proj(x)

    model = get_peft_model(Model(), BottleneckConfig(target_modules=["proj"], bottleneck_size=2,
                                                     init_weights=False)).eval()
    x = torch.randn(3, 6, 8)
    x_copy = x.clone()
    cache = model.base_model.model.proj.base_layer.cache.clone() if module is _FromCache else None
    with torch.inference_mode():
        out = model(x)
    assert torch.equal(x, x_copy)
    if cache is not None:
        assert torch.equal(model.base_model.model.proj.base_layer.cache, cache)
    assert not torch.equal(out, x if module is _Passthrough else cache[1])


@pytest.mark.parametrize("names", [["default", "other", "other"], ["default", "__base__", "other"]])
def test_mixed_batches_write_in_place_only_when_every_example_has_an_adapter(names):
    model = _houlsby_bert()
    inputs = tiny_inputs("bert")
    layer = _first_adapted_layer(model)
    with torch.inference_mode():
        alone = [model(**{k: v[i:i + 1] for k, v in inputs.items()}, adapter_names=[n]).logits
                 for i, n in enumerate(names)]
        records = _record_base_outputs(layer)
        mixed = model(**inputs, adapter_names=names).logits
    torch.testing.assert_close(mixed, torch.cat(alone), rtol=1e-6, atol=1e-6)
    (base_out, base_copy), = records
    if "__base__" in names:  # the base rows keep the module's output: it is not written
        assert torch.equal(base_out, base_copy)
    else:
        assert not torch.equal(base_out, base_copy)


def test_a_stack_of_active_adapters_is_the_same_written_in_place():
    model = _houlsby_bert()
    model.base_model.set_adapter(["default", "other"])
    inputs = tiny_inputs("bert")
    with torch.no_grad():
        written = model(**inputs).logits
    with torch.enable_grad():
        copied = model(**inputs).logits
    assert torch.equal(written, copied.detach())
