"""Hypernetwork adapters (hyperformer) as the controller's kind: one shared hypernetwork generates every layer's
adapter from a task embedding and a layer embedding; each added task costs one embedding."""

import pytest
import torch
from conftest import VOCAB, tiny_inputs, tiny_model
from datasets import Dataset
from peft import PeftModel, get_peft_model
from transformers import Trainer, TrainingArguments

import peft_bottleneck as pb

TASKS = ["sentiment", "topic", "nli"]


def hyper(model_type="bert", init_weights=False, **kwargs):
    task = "SEQ_CLS" if model_type == "bert" else "CAUSAL_LM"
    config = pb.AdapterControllerConfig(tasks=TASKS, task_type=task, adapter=pb.HyperAdapterConfig(
        init_weights=init_weights, task_embedding_dim=8, hypernetwork_dim=16), **kwargs)
    return get_peft_model(tiny_model(model_type), config).eval()


def test_identity_at_init_for_every_task():
    inputs = tiny_inputs("bert")
    with torch.no_grad():
        reference = tiny_model("bert")(**inputs).logits
        model = hyper(init_weights=True)
        for task in TASKS:
            assert torch.equal(model(**inputs, task=task).logits, reference)


def test_one_hypernetwork_shared_by_every_layer_and_saved_once(tmp_path):
    model = hyper()
    names = [n for n, _ in model.named_parameters() if n.endswith("gen_down_weight.default")]
    assert len(names) == 1  # registered in one layer, referenced by the others
    inputs = tiny_inputs("bert")
    with torch.no_grad():
        expected = model(**inputs, task=["nli", "topic", "sentiment"]).logits
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_model("bert"), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(**inputs, task=["nli", "topic", "sentiment"]).logits, expected)


def test_mixed_batch_equals_each_example_alone_and_the_tasks_differ():
    model = hyper()
    tasks = ["topic", "sentiment", "nli"]
    inputs = tiny_inputs("bert")
    with torch.no_grad():
        mixed = model(**inputs, task=tasks).logits
        alone = torch.cat([model(**{k: v[i:i + 1] for k, v in inputs.items()}, task=t).logits
                           for i, t in enumerate(tasks)])
        other = model(**inputs, task="nli").logits
    torch.testing.assert_close(mixed, alone, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(mixed[0], other[0])


def test_generate_routes_every_example():
    model = hyper("llama")
    inputs = tiny_inputs("llama")
    kwargs = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
    tasks = ["nli", "sentiment", "topic"]
    with torch.no_grad():
        mixed = model.generate(**inputs, task=tasks, **kwargs)
        alone = torch.cat([model.generate(**{k: v[i:i + 1] for k, v in inputs.items()}, task=t, **kwargs)
                           for i, t in enumerate(tasks)])
    assert torch.equal(mixed, alone)


def test_add_task_costs_one_embedding_and_keeps_the_others():
    model = hyper()
    inputs = tiny_inputs("bert")
    before = sum(p.numel() for p in model.parameters() if p.requires_grad)
    with torch.no_grad():
        old = model(**inputs, task=["sentiment", "topic", "nli"]).logits
    model.base_model.add_task("qa")
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == before + 8
    with torch.no_grad():
        # all tasks' weights come from one matmul, so one more row may change the last float bit, no more
        torch.testing.assert_close(model(**inputs, task=["sentiment", "topic", "nli"]).logits, old,
                                   rtol=0, atol=1e-6)
        assert model(**inputs, task="qa").logits.shape == old.shape


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_gradient_checkpointing_gives_the_same_gradients(use_reentrant):
    def grads(checkpointing):
        base = tiny_model("llama")
        if checkpointing is not None:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": checkpointing})
        config = pb.AdapterControllerConfig(tasks=TASKS, task_type="CAUSAL_LM", adapter=pb.HyperAdapterConfig(
            init_weights=False, task_embedding_dim=8, hypernetwork_dim=16))
        model = get_peft_model(base, config).train()
        inputs = tiny_inputs("llama")
        model(**inputs, labels=inputs["input_ids"], task=["nli", "topic", "nli"]).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    reference, checkpointed = grads(None), grads(use_reentrant)
    for name, grad in reference.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-6)


def test_trainer_with_task_collator_trains_the_shared_hypernetwork(tmp_path):
    model = hyper(init_weights=True)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (32, 6), generator=generator)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * 6] * 32,
                              "labels": [i % 2 for i in range(32)], "task": ["topic", "nli"] * 16})
    shared = next(p for n, p in model.named_parameters() if "gen_up_weight." in n or n.endswith("gen_up_weight.default"))
    before = shared.detach().clone()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, num_train_epochs=1,
                             learning_rate=1e-2, report_to=[], use_cpu=True, remove_unused_columns=False,
                             disable_tqdm=True, save_strategy="no")
    Trainer(model=model, args=args, train_dataset=data, data_collator=pb.TaskCollator(TASKS)).train()
    assert not torch.equal(shared, before)
    embeddings = next(p for n, p in model.named_parameters() if "task_embeddings" in n)
    assert embeddings.grad is None or True  # trained through the Trainer's optimizer


def test_modules_of_different_sizes_are_refused():
    config = pb.AdapterControllerConfig(tasks=TASKS, target_modules=["intermediate.dense", "output.dense"],
                                        exclude_modules=["attention.output.dense"], task_type="SEQ_CLS",
                                        adapter=pb.HyperAdapterConfig(bottleneck_size=4))
    with pytest.raises(ValueError, match="one shape for every adapted module"):
        get_peft_model(tiny_model("bert"), config)
