"""Model cards: written with huggingface_hub's ModelCard for our adapters, naming the base model by Hub id or folder
name (never a path of the training machine), the adapters' settings and sizes; PEFT's own types keep PEFT's card."""

import pytest
import torch
from huggingface_hub import ModelCard
from peft import LoraConfig, get_peft_model

import peft_bottleneck as pb
from peft_bottleneck.model_card import TrainingRecord, adapter_model_card, base_model_name, settings_of
from conftest import tiny_model


def saved_card(model, folder):
    model.save_pretrained(folder)
    return (folder / "README.md").read_text()


def test_a_local_base_is_named_by_its_folder_with_a_note(tmp_path):
    base = tiny_model("bert")
    base.save_pretrained(tmp_path / "my-bert")
    model = get_peft_model(type(base).from_pretrained(tmp_path / "my-bert"), pb.get_config("seq_bn"))
    text = saved_card(model, tmp_path / "out")
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.base_model == "my-bert" and card.data.library_name == "peft"
    assert str(tmp_path) not in text and "[More Information Needed]" not in text
    assert "local folder named `my-bert`" in text
    assert "BottleneckConfig (PEFT type `BOTTLENECK`)" in text and "`placement='pfeiffer'`" in text
    trainable, total = model.get_nb_trainable_parameters()
    assert f"Trainable parameters: {trainable:,} of {total:,}" in text
    assert {"peft-bottleneck", "bottleneck"} <= set(card.data.tags)


def test_a_hub_base_keeps_its_id_and_every_adapter_is_listed(tmp_path):
    model = get_peft_model(tiny_model("bert"), pb.BottleneckConfig(task_type="SEQ_CLS"))
    model.add_adapter("small", pb.BottleneckConfig(task_type="SEQ_CLS", reduction_factor=4))
    for config in model.peft_config.values():
        config.base_model_name_or_path = "tester/tiny-bert"
    text = saved_card(model, tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model == "tester/tiny-bert" and card.data.pipeline_tag == "text-classification"
    assert "local folder" not in text and "| `small` | BottleneckConfig" in text and "`reduction_factor=4`" in text and "| `default` |" in text


def test_training_record_and_only_changed_settings():
    model = get_peft_model(tiny_model("bert"), pb.BottleneckConfig(reduction_factor=4))
    assert settings_of(model.peft_config["default"])["reduction_factor"] == 4
    assert "non_linearity" not in settings_of(pb.BottleneckConfig())
    text = str(adapter_model_card(model, TrainingRecord(data=["train: `a.csv` (10 rows)"],
                                                        metrics={"eval_accuracy": 0.75}, command="peft-bottleneck train")))
    assert "| eval_accuracy | 0.7500 |" in text and "train: `a.csv` (10 rows)" in text and "```bash" in text


def test_base_model_names():
    assert base_model_name("org/name") == ("org/name", None)
    assert base_model_name("/abs/path/to/model-x/")[0] == "model-x"
    assert base_model_name(None) == (None, None)


def test_peft_types_keep_peft_card(tmp_path):
    model = get_peft_model(tiny_model("bert"), LoraConfig(target_modules=["query"]))
    text = saved_card(model, tmp_path)
    assert "peft-bottleneck" not in text


def test_a_failed_save_leaves_the_old_card(tmp_path, monkeypatch):
    model = get_peft_model(tiny_model("bert"), pb.BottleneckConfig())
    before = saved_card(model, tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    import peft_bottleneck.model_card as cards

    monkeypatch.setattr(cards, "adapter_model_card", broken)
    weights = (tmp_path / "adapter_model.safetensors").read_bytes()
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "bottleneck" in n).add_(1.0)
    with pytest.raises(RuntimeError, match="disk full"):
        model.save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text() == before
    assert (tmp_path / "adapter_model.safetensors").read_bytes() == weights  # the whole save is undone
