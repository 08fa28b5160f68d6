"""Adapters on quantized bases, QLoRA style: the base's linear layers in bitsandbytes 4-bit nf4 / 8-bit (or torchao
int8 weight-only), frozen; the adapters in float32. Every tuner type trains, saves, reloads onto a freshly quantized
base with the same outputs, and serves mixed ``adapter_names`` batches."""

from __future__ import annotations

import pytest
import torch
from conftest import CONFIGS, VOCAB
from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM

import peft_bottleneck as pb

bnb = pytest.importorskip("bitsandbytes")
from transformers import BitsAndBytesConfig  # noqa: E402

QUANTIZATIONS = {
    "nf4": lambda: BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                      bnb_4bit_compute_dtype=torch.float32),
    "int8": lambda: BitsAndBytesConfig(load_in_8bit=True),
}
QUANTIZED_LINEAR = {"nf4": "Linear4bit", "int8": "Linear8bitLt", "torchao": "Linear"}
TUNERS = {
    "houlsby": lambda: pb.BottleneckConfig(task_type="CAUSAL_LM"),
    "pfeiffer": lambda: pb.BottleneckConfig(task_type="CAUSAL_LM", placement="pfeiffer"),
    "parallel": lambda: pb.ParallelAdapterConfig(task_type="CAUSAL_LM"),
    "compacter": lambda: pb.CompacterConfig(task_type="CAUSAL_LM", reduction_factor=4),
    "low_rank": lambda: pb.LowRankConfig(task_type="CAUSAL_LM"),
    "lm_head": lambda: pb.OutputAdapterConfig(task_type="CAUSAL_LM"),
    "controller": lambda: pb.AdapterControllerConfig(tasks=["a", "b"], task_type="CAUSAL_LM"),
}


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("base")
    # bitsandbytes' CPU 4-bit kernels read 128-wide blocks of each input row: every projection 128 wide or more
    config = CONFIGS["llama"]()
    config.hidden_size, config.intermediate_size, config.head_dim, config.num_key_value_heads = 128, 256, 32, 4
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def quantized_base(folder, quantization: str):
    if quantization == "torchao":
        pytest.importorskip("torchao")
        from torchao.quantization import Int8WeightOnlyConfig
        from transformers import TorchAoConfig
        config = TorchAoConfig(Int8WeightOnlyConfig())
    else:
        config = QUANTIZATIONS[quantization]()
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=config, device_map="cpu",
                                                 dtype=torch.float32)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def batch(seed: int = 3, rows: int = 4) -> dict:
    ids = torch.randint(3, VOCAB, (rows, 8), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def routing(kind: str, rows: int = 4) -> dict:
    return {"task": ["a", "b"] * (rows // 2)} if kind == "controller" else {}


def train(model, kind: str, steps: int = 12) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    inputs, losses = batch(), []
    model.train()
    for _ in range(steps):
        loss = model(**inputs, **routing(kind)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("quantization", ["nf4", "int8", "torchao"])
@pytest.mark.parametrize("kind", list(TUNERS))
def test_adapter_on_a_quantized_base_trains_saves_and_reloads(base_folder, tmp_path, quantization, kind):
    model = get_peft_model(quantized_base(base_folder, quantization), TUNERS[kind]())
    quantized = [m for m in model.modules() if type(m).__name__ == QUANTIZED_LINEAR[quantization]]
    assert quantized, "the base was not quantized"
    assert not any(p.requires_grad for m in quantized for p in m.parameters(recurse=False))  # the base stays frozen
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)

    losses = train(model, kind)
    assert losses[-1] < losses[0] - 0.05, losses  # ln(64) = 4.16 at the start on random ids
    model.eval()
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        expected = model(**batch(seed=5), **routing(kind)).logits
        reloaded = PeftModel.from_pretrained(quantized_base(base_folder, quantization), tmp_path).eval()
        got = reloaded(**batch(seed=5), **routing(kind)).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_mixed_adapter_names_on_a_quantized_base_match_one_adapter_at_a_time(base_folder, quantization):
    model = get_peft_model(quantized_base(base_folder, quantization), TUNERS["houlsby"](), adapter_name="first")
    model.add_adapter("second", TUNERS["houlsby"]())
    for name in ("first", "second"):
        model.set_adapter(name)
        train(model, "houlsby", steps=3)  # both leave identity so the rows differ by adapter
    model.eval()
    inputs = batch(seed=5)
    names = ["first", "second", "__base__", "second"]
    with torch.no_grad():
        mixed = model(**inputs, adapter_names=names).logits
        for row, name in enumerate(names):
            if name == "__base__":
                with model.disable_adapter():
                    alone = model(**inputs).logits
            else:
                model.set_adapter(name)
                alone = model(**inputs).logits
            torch.testing.assert_close(mixed[row], alone[row], rtol=0, atol=1e-5)
    assert not torch.allclose(mixed[0], mixed[1])


def test_evaluating_then_saving_leaves_a_4bit_base_as_it_was(base_folder, tmp_path):
    """bitsandbytes on CPU repacks a 4-bit weight at its first no-grad forward and unpacks it inexactly in
    ``state_dict()``; with an adapter attached the weights stay as loaded, so evaluate, save, evaluate (the Trainer's
    rhythm) computes the same, and the same as in training mode."""
    model = get_peft_model(quantized_base(base_folder, "nf4"), TUNERS["houlsby"]())
    train(model, "houlsby", steps=3)
    inputs = batch(seed=5)
    with torch.no_grad():
        training_mode = model(**inputs).logits
        model.eval()
        before = model(**inputs).logits
        model.save_pretrained(tmp_path)
        after = model(**inputs).logits
        reloaded = PeftModel.from_pretrained(quantized_base(base_folder, "nf4"), tmp_path).eval()(**inputs).logits
    torch.testing.assert_close(before, training_mode, rtol=0, atol=1e-6)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    torch.testing.assert_close(reloaded, before, rtol=0, atol=1e-6)


def test_an_adapter_added_to_a_base_that_already_ran_inference_warns(base_folder, tmp_path):
    used = quantized_base(base_folder, "nf4").eval()
    with torch.no_grad():
        used(**batch())
    if not any(getattr(getattr(getattr(m, "weight", None), "quant_state", None), "packing_format_for_cpu", False)
               for m in used.modules()):
        pytest.skip("this CPU has no avx512-bf16: bitsandbytes does not repack here")
    with pytest.warns(UserWarning, match="freshly loaded 4-bit base"):
        get_peft_model(used, TUNERS["houlsby"]())
