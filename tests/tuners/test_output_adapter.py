"""LM-head output adapter: identity at init, tie kept, no vocabulary matrix in the saved file."""

import pytest
import torch
from conftest import task_type, tiny_inputs, tiny_model
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file

from peft_bottleneck import OutputAdapterConfig, OutputAdapterLayer

ARCHS = ["llama", "gpt2", "t5", "bart"]


@pytest.mark.parametrize("model_type", ARCHS)
def test_identity_tie_and_round_trip(model_type, tmp_path):
    inputs = tiny_inputs(model_type)
    base = tiny_model(model_type)
    assert base.get_output_embeddings().weight is base.get_input_embeddings().weight
    with torch.no_grad():
        reference = base(**inputs).logits
    model = get_peft_model(base, OutputAdapterConfig(task_type=task_type(model_type)))
    head = model.get_output_embeddings()
    assert isinstance(head, OutputAdapterLayer)
    assert head.output_adapter_up_weight["default"].shape == (1, base.config.vocab_size, 32 // 16)
    assert head.output_adapter_down_weight["default"].shape == (1, 32 // 16, 32)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reference)

    trained = get_peft_model(tiny_model(model_type), OutputAdapterConfig(task_type=task_type(model_type),
                                                                         init_weights=False)).eval()
    with torch.no_grad():
        expected = trained(**inputs).logits
    assert not torch.allclose(expected, reference)
    trained.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert all("output_adapter_" in key for key in saved), list(saved)
    assert sum(t.numel() for t in saved.values()) == sum(p.numel() for p in trained.parameters() if p.requires_grad)

    loaded = PeftModel.from_pretrained(tiny_model(model_type), tmp_path).eval()
    assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, expected)


def test_generate_uses_the_head_adapter():
    model = get_peft_model(tiny_model("llama"), OutputAdapterConfig(task_type="CAUSAL_LM", init_weights=False)).eval()
    inputs = tiny_inputs("llama")
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        adapted = model.generate(**inputs, **kwargs)
        expected_first = model(**inputs).logits[:, -1]
        with model.disable_adapter():
            plain = model.generate(**inputs, **kwargs)
    # every step's logits went through the head adapter: the first equals the forward's, and differs from plain
    torch.testing.assert_close(adapted.logits[0], expected_first)
    assert all((a - p).abs().max() > 0.1 for a, p in zip(adapted.logits, plain.logits))


def test_target_modules_is_refused_and_encoders_without_head_error():
    with pytest.raises(ValueError, match="target_modules"):
        OutputAdapterConfig(target_modules=["lm_head"])
    with pytest.raises(ValueError, match="get_output_embeddings"):
        get_peft_model(tiny_model("bert").bert, OutputAdapterConfig())
