"""Low-rank adapters: rank-r down and up projections, the closed-form parameter count, identity at init, and the
kind registry at work (the controller and the composition blocks use them without code of their own)."""

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_inputs, tiny_model
from peft import PeftModel, get_peft_model

import peft_bottleneck as pb


@pytest.mark.parametrize("rank, width", [(1, 2), (2, 8), (4, 8)])
def test_closed_form_parameter_count(rank, width):
    model = get_peft_model(tiny_model("bert").bert, pb.LowRankConfig(rank=rank, bottleneck_size=width))
    d, modules = 32, 4  # hidden size; Houlsby: 2 positions x 2 layers
    per_module = rank * (d + width) + rank * (width + d) + width + d
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == modules * per_module


def test_identity_at_init_and_the_rank_r_formula(tmp_path):
    base = tiny_model("bert")
    inputs = tiny_inputs("bert")
    with torch.no_grad():
        reference = base(**inputs).logits
        fresh = get_peft_model(base, pb.LowRankConfig(task_type="SEQ_CLS", rank=2))
        assert torch.equal(fresh(**inputs).logits, reference)
    model = get_peft_model(tiny_model("bert"), pb.LowRankConfig(task_type="SEQ_CLS", rank=2, init_weights=False))
    layer = model.base_model.model.bert.encoder.layer[0].output.dense
    t = {k: v[0] for k, v in layer.tensors_of("default").items()}
    x = torch.randn(2, 3, 64)
    with torch.no_grad():
        h = layer.base_layer(x)
        expected = h + F.linear(F.silu(F.linear(h, t["down_a"] @ t["down_b"], t["down_bias"])), t["up_a"] @ t["up_b"],
                                t["up_bias"])
        torch.testing.assert_close(layer(x), expected)
        expected_logits = model(**inputs).logits
    assert torch.linalg.matrix_rank(t["down_a"] @ t["down_b"]) <= 2
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_model("bert"), tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, expected_logits)


def test_the_controller_and_composition_take_the_new_kind():
    config = pb.AdapterControllerConfig(tasks=["a", "b"], task_type="SEQ_CLS",
                                        adapter=pb.LowRankConfig(rank=2, init_weights=False))
    model = get_peft_model(tiny_model("bert"), config).eval()
    inputs = tiny_inputs("bert")
    with torch.no_grad():
        mixed = model(**inputs, task=["b", "a", "b"]).logits
        alone = model(**{k: v[1:2] for k, v in inputs.items()}, task="a").logits
    torch.testing.assert_close(mixed[1:2], alone, rtol=1e-5, atol=1e-6)
    plain = get_peft_model(tiny_model("bert").bert, pb.LowRankConfig(init_weights=False), adapter_name="x")
    plain.add_adapter("y", pb.LowRankConfig(init_weights=False))
    pb.compose(plain, pb.Average("x", "y"))
    with torch.no_grad():
        assert torch.isfinite(plain(**inputs).last_hidden_state).all()


def test_rank_larger_than_the_sizes_is_refused():
    with pytest.raises(ValueError, match="`rank`=5"):
        get_peft_model(tiny_model("bert"), pb.LowRankConfig(task_type="SEQ_CLS", rank=5, bottleneck_size=4))
