"""Mixed batches: `adapter_names=[...]` routes each example to its adapter in forward and generate."""

import pytest
import torch
from conftest import task_type, tiny_inputs, tiny_model
from peft import get_peft_model

from peft_bottleneck import BottleneckConfig, ParallelAdapterConfig, Routing
from peft_bottleneck.tuners.base.routing import adapter_codes


def two_adapter_model(model_type, config_cls=BottleneckConfig, **second):
    model = get_peft_model(tiny_model(model_type), config_cls(task_type=task_type(model_type), init_weights=False))
    model.add_adapter("other", config_cls(task_type=task_type(model_type), init_weights=False, **second))
    return model.eval()


def each_alone(model, inputs, names, run):
    rows = []
    for i, name in enumerate(names):
        single = {k: v[i : i + 1] for k, v in inputs.items()}
        if name == "__base__":
            with model.disable_adapter():
                rows.append(run(single))
        else:
            model.set_adapter(name)
            rows.append(run(single))
    model.set_adapter("default")
    return torch.cat(rows)


@pytest.mark.parametrize("model_type", ["bert", "llama", "t5", "gpt2"])
@pytest.mark.parametrize("config_cls", [BottleneckConfig, ParallelAdapterConfig])
def test_mixed_batch_forward_equals_each_example_alone(model_type, config_cls):
    # the second adapter differs in width and activation, so padding and per-activation routing are exercised
    model = two_adapter_model(model_type, config_cls, bottleneck_size=3, non_linearity="tanh")
    names = ["default", "other", "__base__", "other"]
    inputs = tiny_inputs(model_type, batch=len(names))
    with torch.no_grad():
        mixed = model(**inputs, adapter_names=names).logits
        alone = each_alone(model, inputs, names, lambda b: model(**b).logits)
    assert torch.allclose(mixed, alone, atol=1e-5)
    # routing does not outlive a call without gradients
    assert model.base_model.routing_state.routing is None


def test_base_rows_are_bit_identical_to_the_base_model():
    model = two_adapter_model("bert")
    inputs = tiny_inputs("bert", batch=2)
    with torch.no_grad():
        mixed = model(**inputs, adapter_names=["__base__", "other"]).logits
        with model.disable_adapter():
            base = model(**inputs).logits
    assert torch.equal(mixed[0], base[0])


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_mixed_generate_greedy_decoder_only(model_type):
    model = two_adapter_model(model_type)
    names = ["other", "default", "__base__"]
    inputs = tiny_inputs(model_type, batch=3)
    kwargs = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        mixed = model.generate(**inputs, adapter_names=names, **kwargs)
        alone = each_alone(model, inputs, names, lambda b: model.generate(**b, **kwargs))
    assert torch.equal(mixed, alone)


@pytest.mark.parametrize("model_type", ["t5", "bart"])
def test_mixed_generate_beam_search_encoder_decoder(model_type):
    model = two_adapter_model(model_type)
    names = ["other", "__base__", "default"]
    inputs = {k: v for k, v in tiny_inputs(model_type, batch=3).items() if not k.startswith("decoder")}
    kwargs = dict(max_new_tokens=4, num_beams=3, do_sample=False, early_stopping=False)
    with torch.no_grad():
        mixed = model.generate(**inputs, adapter_names=names, **kwargs)
        alone = each_alone(model, inputs, names, lambda b: model.generate(**b, **kwargs))
    assert torch.equal(mixed, alone)


def test_mixed_generate_sampling_with_several_return_sequences():
    model = two_adapter_model("llama")
    inputs = tiny_inputs("llama", batch=2)
    with torch.no_grad():
        out = model.generate(**inputs, adapter_names=["other", "default"], do_sample=True, num_return_sequences=3,
                             max_new_tokens=3, pad_token_id=0)
    assert out.shape[0] == 6


def test_unknown_adapter_name_is_a_clear_error():
    model = two_adapter_model("bert")
    with pytest.raises(ValueError, match=r"unknown adapter\(s\) \['nope'\].*\['default', 'other'\]"):
        model(**tiny_inputs("bert", batch=2), adapter_names=["nope", "default"])


def test_adapter_names_in_training_mode_is_refused():
    model = two_adapter_model("bert").train()
    with pytest.raises(ValueError, match="model.eval"):
        model(**tiny_inputs("bert", batch=2), adapter_names=["other", "default"])


def test_wrong_number_of_names_is_a_clear_error():
    model = two_adapter_model("bert")
    with pytest.raises(ValueError, match="one entry per example \\(2\\), but a layer received a batch of 3"):
        model(**tiny_inputs("bert", batch=3), adapter_names=["other", "default"])


def test_routing_codes_and_beam_expansion():
    names, codes = adapter_codes(["b", "a", "b"], available={"a", "b"})
    assert names == ("b", "a")
    assert codes.tolist() == [0, 1, 0]
    routing = Routing(names, codes).with_repeat(2)
    assert routing.adapter_rows(3, torch.device("cpu")).tolist() == [0, 1, 0]
    assert routing.adapter_rows(6, torch.device("cpu")).tolist() == [0, 0, 1, 1, 0, 0]
    with pytest.raises(ValueError, match="a layer received a batch of 4"):
        routing.adapter_rows(4, torch.device("cpu"))
    with pytest.raises(ValueError, match="a layer received a batch of 6"):
        Routing(names, codes).adapter_rows(6, torch.device("cpu"))  # outside generate: no expansion at all
    with pytest.raises(TypeError):
        adapter_codes("a", available={"a"})
    with pytest.raises(ValueError, match="empty"):
        adapter_codes([], available={"a"})


@pytest.mark.parametrize("model_type", ["bert", "llama"])
def test_adapters_wired_differently_share_a_batch(model_type):
    """Houlsby, Pfeiffer (seq_bn: original_ln_before), a gated one and one without the block's residual after."""
    tt = task_type(model_type)
    model = get_peft_model(tiny_model(model_type), BottleneckConfig(task_type=tt, init_weights=False))
    model.add_adapter("pfeiffer", BottleneckConfig(task_type=tt, placement="pfeiffer", init_weights=False))
    model.add_adapter("gated", BottleneckConfig(task_type=tt, init_weights=False, use_gating=True,
                                                scaling="channel", ln_after=True))
    model.add_adapter("no_ln_after", BottleneckConfig(task_type=tt, placement="pfeiffer", init_weights=False,
                                                      original_ln_after=False))
    model.eval()
    names = ["pfeiffer", "default", "__base__", "gated", "no_ln_after", "pfeiffer"]
    inputs = tiny_inputs(model_type, batch=len(names))
    with torch.no_grad():
        mixed = model(**inputs, adapter_names=names).logits
        alone = each_alone(model, inputs, names, lambda b: model(**b).logits)
    torch.testing.assert_close(mixed, alone, rtol=1e-5, atol=1e-5)
    with torch.no_grad(), model.disable_adapter():
        base = model(**inputs).logits
    changed = [(m - b).abs().max() > 1e-4 for m, b in zip(mixed, base)]
    assert changed == [name != "__base__" for name in names]


def test_one_wiring_batches_fold_each_adapters_scale_and_follow_its_changes():
    """Every example on adapters of one wiring (no row kept from the base), with a fixed scale and a learned
    per-channel one: the route table folds each scale into its up projection and refolds when the scale changes."""
    model = get_peft_model(tiny_model("bert"), BottleneckConfig(task_type="SEQ_CLS", init_weights=False, scaling=0.5))
    model.add_adapter("learned", BottleneckConfig(task_type="SEQ_CLS", init_weights=False, scaling="channel"))
    model.eval()
    scales = [p for n, p in model.named_parameters() if "scale" in n and n.endswith(".learned")]
    assert scales
    names = ["learned", "default", "learned", "default"]
    inputs = tiny_inputs("bert", batch=len(names))
    for _ in range(2):
        with torch.no_grad():
            for scale in scales:  # in place, as an optimizer step would
                scale.mul_(torch.rand_like(scale) + 0.5)
            mixed = model(**inputs, adapter_names=names).logits
            alone = each_alone(model, inputs, names, lambda b: model(**b).logits)
        torch.testing.assert_close(mixed, alone, rtol=1e-5, atol=1e-5)


def test_adapters_added_while_serving_grow_the_route_table_and_spare_rows_are_never_read():
    """Adapters added one by one between mixed calls are appended to each layer's route table (grown when full,
    earlier rows kept exactly); rows past the ones in use are never written or read (filled here with NaN)."""
    from peft_bottleneck.tuners.base.layer import AdapterLayer
    from peft_bottleneck.tuners.base.routing import _capacity

    model = two_adapter_model("bert", bottleneck_size=3, non_linearity="tanh")
    layers = [m for m in model.modules() if isinstance(m, AdapterLayer)]
    inputs = tiny_inputs("bert", batch=4)
    capacities = set()
    for added in range(6):
        if added:
            model.add_adapter(f"late{added}", BottleneckConfig(task_type="SEQ_CLS", init_weights=False,
                                                               bottleneck_size=2 + added % 3))
            model.eval()
        adapters = ["default", "other"] + [f"late{i}" for i in range(1, added + 1)]
        names = [adapters[(added + i) % len(adapters)] for i in range(3)] + ["__base__"]
        with torch.no_grad():
            model(**inputs, adapter_names=names)  # brings the tables up to date
            for layer in layers:
                table = layer.route_table
                assert table.tensors["down_weight"].shape[0] >= table.used
                assert all(bool((tensor[0] == 0).all()) for tensor in table.tensors.values())  # the base route
                for tensor in table.tensors.values():
                    tensor[table.used:] = float("nan")
            capacities.add(layers[0].route_table.tensors["down_weight"].shape[0])
            mixed = model(**inputs, adapter_names=names).logits
            alone = each_alone(model, inputs, names, lambda b: model(**b).logits)
        assert torch.isfinite(mixed).all()
        torch.testing.assert_close(mixed, alone, rtol=1e-5, atol=1e-5)
    assert len(capacities) > 1  # the table grew at least once
    assert _capacity(1) == 2 and _capacity(100) == 150


def test_a_call_gathers_into_its_own_memory_reused_from_layer_to_layer():
    """Without gradients, every layer of a call gathers its examples' weights into the same per-call buffers (one
    per column and shape, not one per layer); another call has its own."""
    from peft_bottleneck.tuners.base.layer import AdapterLayer

    model = two_adapter_model("bert", bottleneck_size=3, non_linearity="tanh")
    layers = [m for m in model.modules() if isinstance(m, AdapterLayer)]
    seen = []
    hook = layers[-1].register_forward_hook(lambda m, args, out: seen.append(m.routing_state.current.scratch))
    names = ["default", "other", "__base__", "other"]
    inputs = tiny_inputs("bert", batch=len(names))
    try:
        with torch.inference_mode():
            mixed = model(**inputs, adapter_names=names).logits
            model(**inputs, adapter_names=names)
    finally:
        hook.remove()
    first, second = seen
    assert first is not second
    columns = set(layers[-1].route_table.tensors)
    assert len(layers) > 2 and sorted(slot[0] for slot in first.buffers) == sorted(columns)
    with torch.no_grad():
        alone = each_alone(model, inputs, names, lambda b: model(**b).logits)
    torch.testing.assert_close(mixed, alone, rtol=1e-5, atol=1e-5)


def test_input_gradients_through_a_mixed_batch_of_frozen_adapters_match_each_example_alone():
    """With gradients on (inputs_embeds require grad, adapters frozen), each layer's gathered weights are kept for
    the backward and never overwritten by the next layer's gather."""
    model = two_adapter_model("bert", bottleneck_size=3, non_linearity="tanh")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    names = ["other", "default", "__base__", "other"]
    inputs = tiny_inputs("bert", batch=len(names))
    embeds = model.get_input_embeddings()(inputs["input_ids"]).detach()
    mask = inputs["attention_mask"]

    def input_grad(rows, **kwargs):
        leaf = embeds[rows].clone().requires_grad_(True)
        model(inputs_embeds=leaf, attention_mask=mask[rows], **kwargs).logits.square().sum().backward()
        return leaf.grad

    mixed = input_grad(slice(None), adapter_names=names)
    alone = []
    for i, name in enumerate(names):
        if name == "__base__":
            with model.disable_adapter():
                alone.append(input_grad(slice(i, i + 1)))
        else:
            model.set_adapter(name)
            for parameter in model.parameters():
                parameter.requires_grad_(False)
            alone.append(input_grad(slice(i, i + 1)))
    torch.testing.assert_close(mixed, torch.cat(alone), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("config_cls", [BottleneckConfig, ParallelAdapterConfig])
def test_fused_up_projection_under_autocast_matches_the_unfused_computation(config_cls):
    """The up projection accumulates onto the residual (active adapter and mixed batch); under autocast the
    projections come out in bfloat16 while the residual stays float32, and the sum must still be formed as before
    (cast, then added), not fail on mixed dtypes."""
    model = two_adapter_model("bert", config_cls, scaling=0.5)
    names = ["other", "default", "__base__", "other"]
    inputs = tiny_inputs("bert", batch=len(names))
    with torch.no_grad():
        plain_mixed = model(**inputs, adapter_names=names).logits
        plain_active = model(**inputs).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cast_mixed = model(**inputs, adapter_names=names).logits
            cast_active = model(**inputs).logits
            cast_alone = each_alone(model, inputs, names, lambda b: model(**b).logits)
    torch.testing.assert_close(cast_mixed.float(), cast_alone.float(), rtol=0, atol=2e-2)
    torch.testing.assert_close(cast_mixed.float(), plain_mixed, rtol=0, atol=5e-2)
    torch.testing.assert_close(cast_active.float(), plain_active, rtol=0, atol=5e-2)


def test_fused_up_projection_on_a_non_contiguous_module_output():
    """A wrapped module whose output is a transposed view: the fused sum is still h + s * up(f(down(h)))."""
    from peft_bottleneck.tuners.base.layer import AdapterLayer

    model = two_adapter_model("bert", scaling=0.5)
    layer = next(m for m in model.modules() if isinstance(m, AdapterLayer))
    h = torch.randn(3, 5, layer.out_features).transpose(0, 1)  # (5, 3, d), not contiguous
    assert not h.is_contiguous()
    model.set_adapter("other")  # scale 0.5
    t = {k: v[0] for k, v in layer.tensors_of("other").items()}
    expected = h + 0.5 * torch.nn.functional.linear(
        torch.nn.functional.silu(torch.nn.functional.linear(h, t["down_weight"], t["down_bias"])), t["up_weight"],
        t["up_bias"])
    with torch.no_grad():
        active = layer._adapt(h, h, None, None, on_input=False)
        routing = Routing(("other", "default"), torch.tensor([0, 0, 0, 0, 0]))
        mixed = layer._adapt(h, h, None, routing, on_input=False)
    torch.testing.assert_close(active, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mixed, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_type", ["bert", "llama"])
def test_a_batch_naming_one_adapter_runs_as_that_adapter_made_active(model_type):
    """No gather: the route tables are never built, and the output is bit for bit the active adapter's."""
    from peft_bottleneck.tuners.base.layer import AdapterLayer

    model = two_adapter_model(model_type, bottleneck_size=3, non_linearity="tanh")
    inputs = tiny_inputs(model_type, batch=3)
    with torch.no_grad():
        named = model(**inputs, adapter_names=["other"] * 3).logits
        model.set_adapter("other")
        active = model(**inputs).logits
        model.set_adapter("default")
        default = model(**inputs).logits
    assert torch.equal(named, active) and not torch.allclose(named, default)
    layers = [m for m in model.modules() if isinstance(m, AdapterLayer)]
    assert layers and all(not layer.route_table.tensors for layer in layers)


def test_adapters_on_a_modules_input_and_output_share_a_mixed_batch():
    """An adapter on ``output.dense``'s input (its 4x wider intermediate features) and one on its output route in one
    batch: each side gathers from a table of its own, sized to its own features."""
    model = get_peft_model(tiny_model("bert"), BottleneckConfig(task_type="SEQ_CLS", init_weights=False,
                                                                target_modules=["output.dense"]), adapter_name="out")
    model.add_adapter("in", BottleneckConfig(task_type="SEQ_CLS", init_weights=False, target_modules=["output.dense"],
                                             input_modules=["output.dense"], scaling="channel"))
    model.eval()
    names = ["out", "in", "__base__", "in"]
    inputs = tiny_inputs("bert", batch=len(names))
    with torch.no_grad():
        mixed = model(**inputs, adapter_names=names).logits
        with model.disable_adapter():
            base = model(**inputs).logits
        rows = []
        for i, name in enumerate(names):
            model.set_adapter("out" if name == "__base__" else name)
            row = model(**{k: v[i : i + 1] for k, v in inputs.items()}).logits
            rows.append(base[i : i + 1] if name == "__base__" else row)
    torch.testing.assert_close(mixed, torch.cat(rows), rtol=1e-5, atol=1e-5)
    assert [bool((m - b).abs().max() > 1e-4) for m, b in zip(mixed, base)] == [True, True, False, True]
