"""Task-routed adapter controller (+ LM-head output adapter): per-example routing everywhere it must reach."""

import pytest
import torch
from conftest import VOCAB, task_type, tiny_inputs, tiny_model
from datasets import Dataset
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import Trainer, TrainingArguments

from peft_bottleneck import (
    AdapterControllerConfig,
    BottleneckConfig,
    CompacterConfig,
    OutputAdapterConfig,
    ParallelAdapterConfig,
    TaskCollator,
)
from peft_bottleneck.tuners.controller import ControllerLayer

TASKS = ["sentiment", "topic", "nli"]
KINDS = {
    "bottleneck": lambda: BottleneckConfig(init_weights=False),
    "parallel": lambda: ParallelAdapterConfig(init_weights=False),
    "compacter": lambda: CompacterConfig(bottleneck_size=8, init_weights=False, phm_init_range=0.5),
}


def controller(model_type, kind="bottleneck", **kwargs):
    config = AdapterControllerConfig(tasks=TASKS, adapter=KINDS[kind](), task_type=task_type(model_type), **kwargs)
    return get_peft_model(tiny_model(model_type), config).eval()


def one_by_one(model, inputs, tasks, run):
    return torch.cat([run({k: v[i : i + 1] for k, v in inputs.items()}, task) for i, task in enumerate(tasks)])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("model_type", ["bert", "llama", "t5"])
def test_mixed_batch_equals_each_example_alone(model_type, kind):
    model = controller(model_type, kind)
    tasks = ["topic", "sentiment", "nli", "topic"]
    inputs = tiny_inputs(model_type, batch=len(tasks))
    with torch.no_grad():
        mixed = model(**inputs, task=tasks).logits
        alone = one_by_one(model, inputs, tasks, lambda b, t: model(**b, task=t).logits)
        by_index = model(**inputs, task=torch.tensor([TASKS.index(t) for t in tasks])).logits
        with model.disable_adapter():
            base = model(**inputs).logits
    assert torch.allclose(mixed, alone, atol=1e-5)
    assert torch.equal(by_index, mixed)
    # the tasks' adapters really differ
    assert not torch.allclose(mixed[0], model(**{k: v[:1] for k, v in inputs.items()}, task="nli").logits[0])
    assert not torch.allclose(mixed, base)


def test_one_task_for_the_whole_batch_and_default_task():
    model = controller("bert", default_task="nli")
    inputs = tiny_inputs("bert")
    with torch.no_grad():
        assert torch.equal(model(**inputs, task="nli").logits, model(**inputs, task=["nli"] * 3).logits)
        assert torch.equal(model(**inputs).logits, model(**inputs, task="nli").logits)


@pytest.mark.parametrize(
    "task, error, match",
    [
        (None, ValueError, "pass `task=`"),
        ("unknown", ValueError, r"Unknown task\(s\) \['unknown'\].*sentiment"),
        (torch.tensor([0, 3, 1]), ValueError, r"valid indices are 0..2"),
        ([0, -1, 1], ValueError, "out of range"),
        (3.5, TypeError, "task"),
    ],
)
def test_routing_errors_name_the_valid_tasks(task, error, match):
    model = controller("bert")
    with pytest.raises(error, match=match):
        model(**tiny_inputs("bert"), task=task)


def test_single_adapter_shares_one_adapter():
    shared = controller("bert", use_single_adapter=True)
    per_task = controller("bert")
    count = lambda m: sum(p.numel() for n, p in m.named_parameters() if "adapter_controller" in n)  # noqa: E731
    assert count(per_task) == len(TASKS) * count(shared)
    inputs = tiny_inputs("bert")
    with torch.no_grad():
        assert torch.equal(shared(**inputs).logits, shared(**inputs, task=["nli", "topic", "nli"]).logits)


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_generate_decoder_only_greedy_and_sampling(model_type):
    model = controller(model_type)
    tasks = ["nli", "sentiment", "topic"]
    inputs = tiny_inputs(model_type, batch=3)
    kwargs = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        mixed = model.generate(**inputs, task=tasks, **kwargs)
        alone = one_by_one(model, inputs, tasks, lambda b, t: model.generate(**b, task=t, **kwargs))
        sampled = model.generate(**inputs, task=tasks, do_sample=True, num_return_sequences=2, max_new_tokens=3,
                                 pad_token_id=0)
    assert torch.equal(mixed, alone)
    assert sampled.shape[0] == 6


@pytest.mark.parametrize("model_type", ["t5", "bart"])
def test_generate_beam_search_encoder_decoder(model_type):
    model = controller(model_type)
    tasks = ["topic", "nli", "sentiment"]
    inputs = {k: v for k, v in tiny_inputs(model_type, batch=3).items() if not k.startswith("decoder")}
    kwargs = dict(max_new_tokens=4, num_beams=3, do_sample=False, early_stopping=False)
    with torch.no_grad():
        mixed = model.generate(**inputs, task=tasks, **kwargs)
        alone = one_by_one(model, inputs, tasks, lambda b, t: model.generate(**b, task=t, **kwargs))
    assert torch.equal(mixed, alone)


def _grads(checkpointing, kind):
    base = tiny_model("llama")
    if checkpointing is not None:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": checkpointing})
    config = AdapterControllerConfig(tasks=TASKS, adapter=KINDS[kind](), task_type="CAUSAL_LM")
    model = get_peft_model(base, config).train()
    inputs = tiny_inputs("llama")
    torch.manual_seed(7)
    model(**inputs, labels=inputs["input_ids"], task=["nli", "topic", "nli"]).loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("kind", ["bottleneck", "compacter"])
@pytest.mark.parametrize("use_reentrant", [True, False])
def test_gradient_checkpointing_routes_the_same(use_reentrant, kind):
    reference, checkpointed = _grads(None, kind), _grads(use_reentrant, kind)
    for name, grad in reference.items():
        assert checkpointed[name] is not None and torch.allclose(checkpointed[name], grad, atol=1e-6), name
    # the unused task ("sentiment", index 0) got no gradient, the used ones did
    # every task's weights are rows of one tensor: the unused task's row ("sentiment", 0) got no gradient
    down = [n for n in reference if "adapter_controller_down_" in n and not n.endswith("bias.default")]
    assert down
    assert all(torch.count_nonzero(reference[n][0]) == 0 for n in down)
    assert all(torch.count_nonzero(reference[n][2]) > 0 and torch.count_nonzero(reference[n][1]) > 0 for n in down)


def test_trainer_with_a_task_column(tmp_path):
    model = get_peft_model(tiny_model("bert"), AdapterControllerConfig(
        tasks=TASKS, adapter=BottleneckConfig(), task_type="SEQ_CLS"))
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (32, 6), generator=generator)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * 6] * 32,
                              "labels": [i % 2 for i in range(32)], "task": ["topic", "nli"] * 16})
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "adapter_controller_up_weight" in n}
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, num_train_epochs=1,
                             learning_rate=1e-2, report_to=[], use_cpu=True, remove_unused_columns=False,
                             disable_tqdm=True, save_strategy="no")
    Trainer(model=model, args=args, train_dataset=data, data_collator=TaskCollator(TASKS)).train()
    after = dict(model.named_parameters())
    assert before
    for name, value in before.items():  # one row per task: sentiment (0) was never in the data
        assert torch.equal(after[name][0], value[0]), name
        assert not torch.equal(after[name][1], value[1]) and not torch.equal(after[name][2], value[2]), name


def test_task_collator_errors():
    collator = TaskCollator(TASKS)
    with pytest.raises(ValueError, match="Unknown task 'x'"):
        collator([{"input_ids": [1], "task": "x"}])
    with pytest.raises(KeyError, match="remove_unused_columns=False"):
        collator([{"input_ids": [1]}])
    assert collator([{"input_ids": [1], "task": "nli"}])["task"].tolist() == [2]


@pytest.mark.parametrize("kind", KINDS)
def test_adding_a_task_keeps_the_others_and_saves_the_list(kind, tmp_path):
    model = controller("bert", kind)
    inputs = tiny_inputs("bert")
    tasks = ["topic", "sentiment", "nli"]
    with torch.no_grad():
        before = model(**inputs, task=tasks).logits
    model.peft_config["default"].adapter.init_weights = True  # the new task starts as the identity
    model.base_model.add_task("qa")
    with torch.no_grad():
        assert torch.equal(model(**inputs, task=tasks).logits, before)
        with model.disable_adapter():
            base = model(**inputs).logits
        assert torch.allclose(model(**inputs, task="qa").logits, base, atol=1e-6)
    assert model.peft_config["default"].tasks == [*TASKS, "qa"]
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_model("bert"), tmp_path).eval()
    assert loaded.peft_config["default"].tasks == [*TASKS, "qa"]
    with torch.no_grad():
        assert torch.equal(loaded(**inputs, task=tasks).logits, before)


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(kind, tmp_path):
    model = controller("llama", kind)
    inputs = tiny_inputs("llama")
    tasks = ["nli", "sentiment", "topic"]
    with torch.no_grad():
        expected = model(**inputs, task=tasks).logits
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert all("adapter_controller_" in key for key in saved)
    assert sum(t.numel() for t in saved.values()) == sum(p.numel() for p in model.parameters() if p.requires_grad)
    loaded = PeftModel.from_pretrained(tiny_model("llama"), tmp_path).eval()
    assert isinstance(loaded.peft_config["default"].adapter, type(KINDS[kind]()))
    with torch.no_grad():
        assert torch.equal(loaded(**inputs, task=tasks).logits, expected)


@pytest.mark.parametrize("model_type", ["t5", "llama"])
def test_vip5_combination_is_one_model_and_one_artifact(model_type, tmp_path):
    config = AdapterControllerConfig(
        tasks=TASKS, adapter=BottleneckConfig(init_weights=False), task_type=task_type(model_type),
        output_adapter=OutputAdapterConfig(init_weights=False))
    base = tiny_model(model_type)
    model = get_peft_model(base, config).eval()
    head = model.get_output_embeddings()
    assert isinstance(head, ControllerLayer) and head.adapter_controller_up_weight["default"].shape[0] == len(TASKS)
    assert head.weight is model.get_input_embeddings().weight  # tie kept
    tasks = ["topic", "nli", "sentiment"]
    inputs = {k: v for k, v in tiny_inputs(model_type).items() if not k.startswith("decoder")}
    kwargs = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        logits = model(**tiny_inputs(model_type), task=tasks).logits
        generated = model.generate(**inputs, task=tasks, **kwargs)
        alone = one_by_one(model, inputs, tasks, lambda b, t: model.generate(**b, task=t, **kwargs))
    assert torch.equal(generated, alone)

    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".json", ".safetensors")) == [
        "adapter_config.json", "adapter_model.safetensors"]
    saved = load_file(tmp_path / "adapter_model.safetensors")
    head_keys = [k for k in saved if k.startswith("base_model.model.lm_head.")]
    assert head_keys and all("adapter_controller_" in k for k in saved)
    assert not any(t.shape == (VOCAB, 32) for t in saved.values())  # no vocabulary matrix
    loaded = PeftModel.from_pretrained(tiny_model(model_type), tmp_path).eval()
    assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight
    with torch.no_grad():
        assert torch.equal(loaded(**tiny_inputs(model_type), task=tasks).logits, logits)


def test_shared_output_adapter_option():
    config = AdapterControllerConfig(tasks=TASKS, task_type="CAUSAL_LM", output_adapter=OutputAdapterConfig(),
                                     output_adapter_per_task=False)
    model = get_peft_model(tiny_model("llama"), config)
    assert model.get_output_embeddings().adapter_controller_up_weight["default"].shape[0] == 1
    layer = model.base_model.model.model.layers[0].mlp.down_proj
    assert layer.adapter_controller_up_weight["default"].shape[0] == len(TASKS)


def test_learned_scaling_is_per_task():
    model = get_peft_model(tiny_model("bert"), AdapterControllerConfig(
        tasks=TASKS, adapter=BottleneckConfig(scaling="learned"), task_type="SEQ_CLS"))
    layer = next(m for m in model.modules() if isinstance(m, ControllerLayer))
    assert layer.adapter_controller_scale["default"].shape == (len(TASKS),)
    assert layer.adapter_controller_scale["default"].requires_grad


def test_config_validation():
    with pytest.raises(ValueError, match="`tasks`"):
        AdapterControllerConfig(tasks=[])
    with pytest.raises(ValueError, match="unique"):
        AdapterControllerConfig(tasks=["a", "a"])
    with pytest.raises(ValueError, match="`default_task`"):
        AdapterControllerConfig(tasks=["a"], default_task="b")
    with pytest.raises(ValueError, match="not on its `adapter`"):
        AdapterControllerConfig(tasks=["a"], adapter=BottleneckConfig(target_modules=["x"]))
    with pytest.raises(ValueError, match="output_adapter"):
        AdapterControllerConfig(tasks=["a"], adapter=OutputAdapterConfig())


def test_adapter_names_is_refused_with_a_pointer_to_task():
    model = controller("bert")
    with pytest.raises(ValueError, match="task="):
        model(**tiny_inputs("bert"), adapter_names=["default"] * 3)
