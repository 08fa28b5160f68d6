"""End to end with the HF Trainer, gradient checkpointing, dtypes, torch.compile and device placement."""

import os
import re

import pytest
import torch
from conftest import VOCAB, tiny_inputs, tiny_model
from datasets import Dataset
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

from peft_bottleneck import BottleneckConfig, BottleneckLayer, CompacterConfig, ParallelAdapterConfig


def toy_classification(n=64, length=8, seed=0):
    """Label 1 iff token 5 occurs: learnable by a small adapter on a frozen random encoder."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, VOCAB, (n, length), generator=generator)
    labels = torch.arange(n) % 2
    ids[labels == 1, 0] = 5
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * length] * n, "labels": labels.tolist()})


def trainer_args(tmp_path, **kw):
    defaults = dict(output_dir=str(tmp_path), per_device_train_batch_size=16, per_device_eval_batch_size=32,
                    learning_rate=5e-3, num_train_epochs=3, report_to=[], use_cpu=True, logging_steps=1,
                    disable_tqdm=True, seed=0)
    return TrainingArguments(**{**defaults, **kw})


@pytest.mark.parametrize(
    "config",
    [BottleneckConfig(task_type="SEQ_CLS"), ParallelAdapterConfig(task_type="SEQ_CLS"),
     CompacterConfig(task_type="SEQ_CLS", bottleneck_size=8, phm_init_range=0.1)],
    ids=["houlsby", "parallel", "compacter"],
)
def test_trainer_end_to_end_with_best_model_at_end(config, tmp_path):
    model = get_peft_model(tiny_model("bert"), config)
    args = trainer_args(tmp_path, eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True,
                        metric_for_best_model="eval_loss", save_total_limit=None)
    trainer = Trainer(model=model, args=args, train_dataset=toy_classification(), eval_dataset=toy_classification(seed=1))
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < before

    checkpoints = sorted(p for p in os.listdir(tmp_path) if p.startswith("checkpoint-"))
    assert len(checkpoints) == 3
    for checkpoint in checkpoints:
        files = set(os.listdir(tmp_path / checkpoint))
        assert "adapter_model.safetensors" in files and "adapter_config.json" in files
        assert "model.safetensors" not in files and "pytorch_model.bin" not in files
        keys = load_file(tmp_path / checkpoint / "adapter_model.safetensors")
        assert all(model.base_model.prefix in k or "classifier" in k for k in keys)

    # load_best_model_at_end restored the best checkpoint's adapter weights
    best = trainer.state.best_model_checkpoint
    assert best is not None
    saved = load_file(os.path.join(best, "adapter_model.safetensors"))
    current = {k: v for k, v in model.state_dict().items() if model.base_model.prefix in k}
    for key, value in current.items():
        assert torch.equal(value, saved[re.sub(r"\.default(?=\.|$)", "", key)]), key

    # and a saved checkpoint reloads onto a fresh base with the same predictions
    model.eval()
    reloaded = PeftModel.from_pretrained(tiny_model("bert"), best).eval()
    inputs = tiny_inputs("bert")
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, model(**inputs).logits)


def adapter_grads(model_type, config_factory, checkpointing=None):
    base = tiny_model(model_type)
    if checkpointing is not None:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": checkpointing})
    model = get_peft_model(base, config_factory())
    model.train()  # tiny models keep dropout; seed it so both runs draw the same masks
    inputs = tiny_inputs(model_type)
    torch.manual_seed(123)
    labels = inputs["input_ids"] if model_type == "llama" else torch.tensor([0, 1, 0])
    model(**inputs, labels=labels).loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("use_reentrant", [True, False], ids=["reentrant", "non-reentrant"])
@pytest.mark.parametrize(
    "model_type, config_factory",
    [
        ("llama", lambda: BottleneckConfig(task_type="CAUSAL_LM", init_weights=False)),
        ("llama", lambda: ParallelAdapterConfig(task_type="CAUSAL_LM", init_weights=False)),
        ("bert", lambda: ParallelAdapterConfig(task_type="SEQ_CLS", init_weights=False)),
        ("llama", lambda: CompacterConfig(task_type="CAUSAL_LM", bottleneck_size=8, init_weights=False)),
    ],
    ids=["llama-bottleneck", "llama-parallel", "bert-parallel-span", "llama-compacter"],
)
def test_gradient_checkpointing_gives_the_same_gradients(model_type, config_factory, use_reentrant):
    reference = adapter_grads(model_type, config_factory)
    checkpointed = adapter_grads(model_type, config_factory, checkpointing=use_reentrant)
    assert reference.keys() == checkpointed.keys()
    for name, grad in reference.items():
        assert checkpointed[name] is not None, name
        assert torch.allclose(checkpointed[name], grad, atol=1e-6), name


@pytest.mark.parametrize("autocast_adapter_dtype", [True, False])
def test_bf16_model(autocast_adapter_dtype):
    base = tiny_model("llama").to(torch.bfloat16)
    inputs = tiny_inputs("llama")
    with torch.no_grad():
        reference = base(**inputs).logits
    model = get_peft_model(base, BottleneckConfig(task_type="CAUSAL_LM"), autocast_adapter_dtype=autocast_adapter_dtype)
    layer = next(m for m in model.modules() if isinstance(m, BottleneckLayer))
    assert layer.bottleneck_down_weight["default"].dtype == (torch.float32 if autocast_adapter_dtype else torch.bfloat16)
    with torch.no_grad():
        out = model(**inputs).logits
    assert out.dtype == torch.bfloat16 and torch.equal(out, reference)
    model.train()
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    assert layer.bottleneck_up_weight["default"].grad is not None


@pytest.mark.parametrize(
    "model_type, config",
    [("llama", BottleneckConfig(task_type="CAUSAL_LM", init_weights=False)),
     ("bert", ParallelAdapterConfig(task_type="SEQ_CLS", init_weights=False)),
     ("llama", CompacterConfig(task_type="CAUSAL_LM", bottleneck_size=8, init_weights=False))],
    ids=["llama-bottleneck", "bert-parallel-span", "llama-compacter"],
)
def test_torch_compile(model_type, config):
    torch._dynamo.reset()
    model = get_peft_model(tiny_model(model_type), config).eval()
    inputs = tiny_inputs(model_type)
    with torch.no_grad():
        eager = model(**inputs).logits
    compiled = torch.compile(model)
    with torch.no_grad():
        assert torch.allclose(compiled(**inputs).logits, eager, atol=1e-5)
    model.train()
    compiled(**inputs).logits.float().pow(2).mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_device_map_loaded_base_and_to(tmp_path):
    tiny_model("bert").save_pretrained(tmp_path)
    base = AutoModelForSequenceClassification.from_pretrained(tmp_path, device_map={"": "cpu"})
    model = get_peft_model(base, BottleneckConfig(task_type="SEQ_CLS"))
    model.to(torch.float64)
    layer = next(m for m in model.modules() if isinstance(m, BottleneckLayer))
    assert layer.bottleneck_down_weight["default"].dtype == torch.float64
    with torch.no_grad():
        assert model(**tiny_inputs("bert")).logits.dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_adapters_follow_the_base_layer_device():
    base = tiny_model("llama").cuda()
    model = get_peft_model(base, BottleneckConfig(task_type="CAUSAL_LM"))
    for layer in (m for m in model.modules() if isinstance(m, BottleneckLayer)):
        assert layer.bottleneck_down_weight["default"].is_cuda
    inputs = {k: v.cuda() for k, v in tiny_inputs("llama").items()}
    with torch.no_grad():
        model(**inputs)
