"""Composition blocks, each checked against a direct computation on a tiny model: Stack, Average, BatchSplit (== the
per-example routing), Parallel (the batch once per child, outputs side by side), Fuse (AdapterFusion); nesting,
saving with the composition, gradient checkpointing, generate, the controller."""

import pytest
import torch
import torch.nn.functional as F
from conftest import task_type, tiny_inputs, tiny_model
from peft import get_peft_model

import peft_bottleneck as pb
from peft_bottleneck import Average, BatchSplit, Fuse, Parallel, Stack, add_fusion, compose

NAMES = ("lang", "a", "b")


def model_with(model_type="bert", kinds=None, head=True):
    tt = task_type(model_type) if head else None
    kinds = kinds or {}
    make = lambda n: kinds.get(n, pb.BottleneckConfig)(task_type=tt, init_weights=False)  # noqa: E731
    model = get_peft_model(tiny_model(model_type), make("lang"), adapter_name="lang")
    for name in NAMES[1:]:
        model.add_adapter(name, make(name))
    return model.eval()


def layer_of(model):
    return model.base_model.model.bert.encoder.layer[0].output.dense


def delta(layer, name, h):
    t = {k: v[0] for k, v in layer.tensors_of(name).items()}
    act = {"swish": F.silu, "relu": F.relu}[layer.settings[name].non_linearity]
    return F.linear(act(F.linear(h, t["down_weight"], t["down_bias"])), t["up_weight"], t["up_bias"])


def test_stack_feeds_each_output_to_the_next():
    model = model_with(head=False)  # PEFT allows several active adapters only without a modules_to_save head
    layer = layer_of(model)
    compose(model, Stack("lang", "a"))
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        h = layer.base_layer(x)
        h1 = h + delta(layer, "lang", h)
        torch.testing.assert_close(layer(x), h1 + delta(layer, "a", h1))
        # PEFT's several active adapters mean the same Stack
        compose(model, None)
        model.base_model.set_adapter(["lang", "a"])
        torch.testing.assert_close(layer(x), h1 + delta(layer, "a", h1))


def test_average_is_the_weighted_mean_of_the_outputs():
    model = model_with()
    layer = layer_of(model)
    compose(model, Average("a", "b", weights=[3, 1]))
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        h = layer.base_layer(x)
        expected = 0.75 * (h + delta(layer, "a", h)) + 0.25 * (h + delta(layer, "b", h))
        torch.testing.assert_close(layer(x), expected)


def alone(model, name, inputs):
    compose(model, name)
    with torch.no_grad():
        return model(**inputs).logits


def test_batch_split_equals_per_example_routing():
    model = model_with()
    inputs = tiny_inputs("bert", batch=5)
    compose(model, BatchSplit("a", "b", batch_sizes=[2, 3]))
    with torch.no_grad():
        split = model(**inputs).logits
    compose(model, None)
    with torch.no_grad():
        routed = model(**inputs, adapter_names=["a", "a", "b", "b", "b"]).logits
    torch.testing.assert_close(split, routed)
    torch.testing.assert_close(split[:2], alone(model, "a", inputs)[:2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(split[2:], alone(model, "b", inputs)[2:], rtol=1e-5, atol=1e-6)


def test_batch_split_of_blocks_slices_the_batch():
    model = model_with()
    inputs = tiny_inputs("bert", batch=4)
    compose(model, BatchSplit(Stack("lang", "a"), "b", batch_sizes=[1, 3]))
    with torch.no_grad():
        split = model(**inputs).logits
    torch.testing.assert_close(split[:1], alone(model, Stack("lang", "a"), inputs)[:1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(split[1:], alone(model, "b", inputs)[1:], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("block", [Parallel("a", "b"), Stack("lang", Parallel("a", "b"))], ids=repr)
def test_parallel_returns_each_childs_outputs_side_by_side(block):
    model = model_with()
    inputs = tiny_inputs("bert", batch=3)
    compose(model, block)
    with torch.no_grad():
        out = model(**inputs).logits
    assert out.shape[0] == 6
    first = Stack("lang", "a") if isinstance(block, Stack) else "a"
    second = Stack("lang", "b") if isinstance(block, Stack) else "b"
    torch.testing.assert_close(out[:3], alone(model, first, inputs), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[3:], alone(model, second, inputs), rtol=1e-5, atol=1e-6)


def test_parallel_generate_returns_one_sequence_per_child_and_example():
    model = model_with("llama")
    inputs = tiny_inputs("llama", batch=2)
    kwargs = dict(max_new_tokens=3, do_sample=False, pad_token_id=0)
    compose(model, Parallel("a", "b"))
    with torch.no_grad():
        both = model.generate(**inputs, **kwargs)
    compose(model, "b")
    with torch.no_grad():
        only_b = model.generate(**inputs, **kwargs)
    assert both.shape[0] == 4 and torch.equal(both[2:], only_b)


def test_fusion_starts_as_the_average_and_trains_only_itself(tmp_path):
    model = model_with()
    layer = layer_of(model)
    name = add_fusion(model, Fuse("a", "b"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("fusion" in n or "modules_to_save" in n for n in trainable)
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        h = layer.base_layer(x)
        t = {k: v[0] for k, v in layer.tensors_of(name).items()}
        u = torch.stack([delta(layer, "a", h), delta(layer, "b", h)], -2)
        q = F.linear(h, t["fusion_query_weight"], t["fusion_query_bias"])
        k = F.linear(u, t["fusion_key_weight"], t["fusion_key_bias"])
        p = torch.softmax((q.unsqueeze(-2) * k).sum(-1), -1)
        expected = h + (p.unsqueeze(-1) * F.linear(u, t["fusion_value_weight"])).sum(-2)
        got = layer(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    average = h + u.mean(-2)
    assert (got - average).abs().max() < 0.05 * (got - h).abs().max()  # identity values, near-uniform attention
    attention = pb.fusion_attention(model)
    assert attention and all(v.shape == (2,) and abs(float(v.sum()) - 1) < 1e-5 for v in attention.values())


def test_fusion_trains_with_the_trainer_saves_the_composition_and_loads_back(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model = model_with()
    model.base_model.model.train()
    add_fusion(model, Fuse("a", "b"))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "fusion" not in n}
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 64, (32, 6), generator=generator)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": (ids[:, 0] % 2).tolist()})
    args = TrainingArguments(output_dir=str(tmp_path / "t"), per_device_train_batch_size=8, num_train_epochs=1,
                             learning_rate=1e-2, report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="no")
    Trainer(model=model, args=args, train_dataset=data).train()
    for n, p in model.named_parameters():
        if n in frozen and "modules_to_save" not in n:
            assert torch.equal(p, frozen[n]), n  # base and adapters frozen
    model.eval()
    inputs = tiny_inputs("bert")
    with torch.no_grad():
        expected = model(**inputs).logits
    model.save_pretrained(tmp_path / "saved")
    loaded = pb.load_composed(tiny_model("bert"), tmp_path / "saved").eval()
    assert loaded.base_model.routing_state.composition == Fuse("a", "b")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, expected)


def test_a_fusion_over_a_missing_adapter_is_refused_by_name(tmp_path):
    model = model_with()
    add_fusion(model, Fuse("a", "b"))
    model.save_pretrained(tmp_path)
    from peft import PeftModel

    base = PeftModel.from_pretrained(tiny_model("bert"), str(tmp_path / "lang"), adapter_name="lang")
    with pytest.raises(ValueError, match=r"`fusion_of` .* names adapters the model does not have: \['a', 'b'\]"):
        base.load_adapter(str(tmp_path / "fusion_a_b"), adapter_name="fusion_a_b")


@pytest.mark.parametrize("bad, message", [
    (lambda: Fuse("a", Stack("b")), "Fuse cannot hold a Stack"),
    (lambda: Average("a", Parallel("a", "b")), "Average cannot hold a Parallel"),
    (lambda: BatchSplit("a", "b", batch_sizes=[1]), "batch_sizes"),
    (lambda: Average("a", "b", weights=[1, -1]), "weights"),
    (lambda: Stack(), "at least one child"),
])
def test_unsupported_nestings_say_which(bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        bad()


def test_compose_checks_names_and_routing_conflicts():
    model = model_with()
    with pytest.raises(ValueError, match=r"does not have: \['zzz'\]"):
        compose(model, Stack("a", "zzz"))
    with pytest.raises(ValueError, match="add_fusion"):
        compose(model, Fuse("a", "b"))
    compose(model, Stack("lang", "a"))
    with pytest.raises(ValueError, match="cannot be combined with an active composition"):
        model(**tiny_inputs("bert", batch=2), adapter_names=["a", "b"])


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_gradient_checkpointing_gives_the_same_gradients_through_fusion(use_reentrant):
    def grads(checkpointing):
        base = tiny_model("llama")
        if checkpointing is not None:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": checkpointing})
        model = get_peft_model(base, pb.BottleneckConfig(task_type="CAUSAL_LM", init_weights=False),
                               adapter_name="a")
        model.add_adapter("b", pb.BottleneckConfig(task_type="CAUSAL_LM", init_weights=False))
        add_fusion(model, Fuse("a", "b"))
        model.train()
        inputs = tiny_inputs("llama")
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    reference, checkpointed = grads(None), grads(use_reentrant)
    assert reference
    for name, grad in reference.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-6)


def test_bf16_and_torch_compile():
    model = model_with()
    compose(model, Stack("lang", Average("a", "b")))
    inputs = tiny_inputs("bert")
    with torch.no_grad():
        eager = model(**inputs).logits
        torch._dynamo.reset()
        compiled = torch.compile(model)
        torch.testing.assert_close(compiled(**inputs).logits, eager, rtol=1e-5, atol=1e-5)
    half = model_with()
    half.base_model.model.to(torch.bfloat16)
    compose(half, Stack("lang", "a"))
    with torch.no_grad():
        assert torch.isfinite(half(**inputs).logits.float()).all()


def test_composition_with_the_controller_routes_tasks_inside_the_blocks():
    config = lambda: pb.AdapterControllerConfig(tasks=["x", "y"], task_type="SEQ_CLS",  # noqa: E731
                                                adapter=pb.BottleneckConfig(init_weights=False))
    model = get_peft_model(tiny_model("bert"), config(), adapter_name="a")
    model.add_adapter("b", config())
    model.eval()
    inputs = tiny_inputs("bert")
    compose(model, Stack("a", "b"))
    with torch.no_grad():
        mixed = model(**inputs, task=["x", "y", "x"]).logits
        first = model(**{k: v[:1] for k, v in inputs.items()}, task="x").logits
    torch.testing.assert_close(mixed[:1], first, rtol=1e-5, atol=1e-6)
