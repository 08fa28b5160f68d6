"""LLM-Adapters' bottleneck checkpoints load with PeftModel.from_pretrained as they are and compute their math.

The checkpoints are built here from LLM-Adapters' format: an adapter_config.json with peft_type "BOTTLENECK" and their
fields, and a torch-saved ``adapter_model.bin`` with ``<target>.adapter_down.weight`` / ``adapter_up.weight``
(no biases) and, for learned scaling, ``adapter_scaling``. Their math: an adapter on gate_proj / up_proj transforms
the module's input, ``linear(x + s * up(f(down(x))))``; on down_proj its output; parallel: ``linear(x) + s *
up(f(down(x)))``.
"""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_inputs, tiny_model
from peft import PeftModel

from peft_bottleneck import BottleneckConfig

WIDTH = 4
ACT = {"tanh": torch.tanh, "relu": F.relu}


def write_checkpoint(folder, targets, parallel=False, scaling=1.0, non_linearity="tanh", seed=0):
    base = tiny_model("llama")
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in base.named_modules():
        if name.split(".")[-1] not in targets:
            continue
        side = module.out_features if name.endswith("down_proj") and not parallel else module.in_features
        out = module.out_features if parallel else side
        prefix = f"base_model.model.{name}"
        tensors[f"{prefix}.adapter_down.weight"] = torch.randn(WIDTH, side, generator=generator) * 0.3
        tensors[f"{prefix}.adapter_up.weight"] = torch.randn(out, WIDTH, generator=generator) * 0.3
        if scaling == "learned":
            tensors[f"{prefix}.adapter_scaling"] = torch.rand(1, generator=generator) + 0.5
    config = {"peft_type": "BOTTLENECK", "task_type": "CAUSAL_LM", "base_model_name_or_path": "llama",
              "bottleneck_size": WIDTH, "non_linearity": non_linearity, "adapter_dropout": 0.0,
              "use_parallel_adapter": parallel, "use_adapterp": False, "target_modules": list(targets),
              "scaling": scaling, "bias": "none", "inference_mode": True}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    torch.save(tensors, folder / "adapter_model.bin")
    return tensors


def direct(tensors, parallel, scaling, non_linearity):
    """The tiny Llama with LLM-Adapters' math patched in by forward hooks, straight from the tensors."""
    model = tiny_model("llama")
    f = ACT[non_linearity]
    for name, module in model.named_modules():
        key = f"base_model.model.{name}"
        if f"{key}.adapter_down.weight" not in tensors:
            continue
        down, up = tensors[f"{key}.adapter_down.weight"], tensors[f"{key}.adapter_up.weight"]
        s = tensors.get(f"{key}.adapter_scaling", torch.tensor(scaling if scaling != "learned" else 1.0))
        adapter = (lambda x, d=down, u=up, s=s: F.linear(f(F.linear(x, d)), u) * s)
        if parallel:
            module.register_forward_hook(lambda m, a, out, g=adapter: out + g(a[0]))
        elif name.endswith("down_proj"):
            module.register_forward_hook(lambda m, a, out, g=adapter: out + g(out))
        else:
            module.register_forward_pre_hook(lambda m, a, g=adapter: (a[0] + g(a[0]),))
    return model


@pytest.mark.parametrize("targets, parallel, scaling", [
    (("gate_proj", "up_proj", "down_proj"), False, 1.0),
    (("down_proj",), False, "learned"),
    (("gate_proj", "up_proj", "down_proj"), True, 2.0),
    (("q_proj", "v_proj"), True, "learned"),
])
def test_llm_adapters_checkpoint_loads_and_computes_their_math(tmp_path, targets, parallel, scaling):
    tensors = write_checkpoint(tmp_path, targets, parallel, scaling)
    model = PeftModel.from_pretrained(tiny_model("llama"), tmp_path).eval()
    config = model.peft_config["default"]
    assert isinstance(config, BottleneckConfig) and config.is_parallel == parallel and not config.adapter_biases
    inputs = tiny_inputs("llama")
    with torch.no_grad():
        expected = direct(tensors, parallel, scaling, "tanh")(**inputs).logits
        plain = tiny_model("llama")(**inputs).logits
        got = model(**inputs).logits
    assert (expected - plain).abs().max() > 1e-3
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_their_dict_form_of_target_modules(tmp_path):
    tensors = write_checkpoint(tmp_path, ("up_proj", "down_proj"), non_linearity="relu")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["target_modules"] = {"up_proj": "mh_adapter", "down_proj": "output_adapter"}
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    model = PeftModel.from_pretrained(tiny_model("llama"), tmp_path).eval()
    inputs = tiny_inputs("llama")
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, direct(tensors, False, 1.0, "relu")(**inputs).logits,
                                   rtol=1e-5, atol=1e-5)
