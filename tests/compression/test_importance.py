"""Layer importance during training, calibration ablation, AdapterDrop, compression plans."""

import json

import pytest
import torch
from conftest import VOCAB, tiny_inputs, tiny_model
from datasets import Dataset
from peft import get_peft_model
from transformers import Trainer, TrainerCallback, TrainingArguments

from peft_bottleneck import (
    AdapterDropCallback,
    BottleneckConfig,
    LayerImportanceCallback,
    calibrate,
    compression_plan,
    find_layer_stacks,
    heal,
    set_adapter_drop,
)
from peft_bottleneck.compression import METHODS, LayerScorer, greedy_scores, least_important


def toy_data(n=32, length=6):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(6, VOCAB, (n, length), generator=generator)
    labels = torch.arange(n) % 2
    ids[labels == 1, 0] = 5
    mask = torch.ones_like(ids)
    mask[::3, -2:] = 0  # some padding
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "labels": labels.tolist()})


def batches(n=2):
    data = toy_data(8 * n)
    return [{k: torch.tensor(data[i * 8:(i + 1) * 8][k]) for k in ("input_ids", "attention_mask", "labels")}
            for i in range(n)]


class RecordLogs(TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def train_with(callback, tmp_path, model=None, **kw):
    model = model or get_peft_model(tiny_model("bert"), BottleneckConfig(task_type="SEQ_CLS"))
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, num_train_epochs=2,
                             learning_rate=1e-2, report_to=[], use_cpu=True, logging_steps=2, disable_tqdm=True,
                             save_strategy="no", **kw)
    trainer = Trainer(model=model, args=args, train_dataset=toy_data())
    recorder = RecordLogs()
    trainer.add_callback(recorder)
    callback.attach(trainer)
    trainer.train()
    return model, recorder


def test_callback_scores_every_method_logs_and_writes_reports(tmp_path):
    callback = LayerImportanceCallback(calibration_batches=batches())
    model, recorder = train_with(callback, tmp_path)
    scores = callback.result["scores"]
    assert set(scores) == set(METHODS)
    assert all(len(values) == 2 for values in scores.values())
    assert all(v > 0 for v in scores["gate_fisher"])  # gradients through a frozen base, via hooks
    assert all(v > 0 for v in scores["adapter_norm"])
    assert any("layer_importance/gate_fisher/1" in logs for logs in recorder.logs)
    report = json.loads((tmp_path / "layer_importance.json").read_text())
    assert report["stack"] == "bert.encoder.layer" and len(report["ablation_order"]) == 1
    assert (tmp_path / "layer_importance.png").stat().st_size > 1000


def test_block_influence_matches_hidden_states_with_padding_masked():
    model = tiny_model("bert")
    scorer = LayerScorer(model, methods=("block_influence",)).attach()
    inputs = tiny_inputs("bert", batch=4)
    inputs["attention_mask"][1, -3:] = 0
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states
    scorer.detach()
    mask = inputs["attention_mask"].float()
    for layer in range(2):
        cosine = torch.nn.functional.cosine_similarity(hidden[layer], hidden[layer + 1], dim=-1)
        expected = ((1 - cosine) * mask).sum() / mask.sum()
        assert scorer.scores()["block_influence"][layer] == pytest.approx(float(expected), rel=1e-5)


def test_gate_fisher_equals_the_gradient_of_an_explicit_gate():
    model = get_peft_model(tiny_model("llama"), BottleneckConfig(task_type="CAUSAL_LM", init_weights=False))
    model.train()
    inputs = tiny_inputs("llama", batch=1)
    scorer = LayerScorer(model, methods=("gate_fisher", "taylor")).attach()
    torch.manual_seed(3)
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    scorer.after_backward()
    scorer.detach()

    # the same loss with a real gate g_l = 1 on layer 1's update: dL/dg_l must match
    layer = find_layer_stacks(model)[0].layers[1]
    gate = torch.ones((), requires_grad=True)
    captured = {}
    pre = layer.register_forward_pre_hook(lambda m, a, k: captured.update(h_in=a[0] if a else k["hidden_states"]),
                                          with_kwargs=True)
    post = layer.register_forward_hook(
        lambda m, a, k, out: captured["h_in"] + gate * (out - captured["h_in"]), with_kwargs=True)
    torch.manual_seed(3)
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    pre.remove()
    post.remove()
    assert scorer.scores()["gate_fisher"][1] == pytest.approx(float(gate.grad) ** 2, rel=1e-4)
    assert scorer.scores()["taylor"][1] == pytest.approx(abs(float(gate.grad)), rel=1e-4)


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_gradient_checkpointing_does_not_double_count(use_reentrant):
    def fisher(checkpointing):
        base = tiny_model("llama")
        if checkpointing is not None:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": checkpointing})
        model = get_peft_model(base, BottleneckConfig(task_type="CAUSAL_LM", init_weights=False)).train()
        scorer = LayerScorer(model, methods=("gate_fisher", "block_influence")).attach()
        inputs = tiny_inputs("llama")
        torch.manual_seed(5)
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
        scorer.after_backward()
        return scorer.scores()

    reference, checkpointed = fisher(None), fisher(use_reentrant)
    for method in reference:
        assert checkpointed[method] == pytest.approx(reference[method], rel=1e-4), method


def test_calibrate_one_shot_and_greedy():
    model = get_peft_model(tiny_model("bert"), BottleneckConfig(task_type="SEQ_CLS"))
    result = calibrate(model, batches())
    assert len(result["ablation"]) == 2 and any(abs(v) > 0 for v in result["ablation"])
    assert [step["layer"] for step in result["ablation_order"]] in ([0], [1])
    first_removed = result["ablation_order"][0]["layer"]
    assert least_important(result["ablation_greedy"], 1) == [first_removed]


def test_greedy_scores_follow_the_removal_order():
    assert greedy_scores([2, 0], 4) == [1.0, 2.0, 0.0, 2.0]
    assert least_important(greedy_scores([3, 1, 0], 4), 2) == [1, 3]


def test_default_prune_method_is_greedy_ablation_with_calibration(tmp_path):
    assert LayerImportanceCallback().prune_method == "gate_fisher"
    callback = LayerImportanceCallback(calibration_batches=batches(), prune_to=1)
    assert callback.prune_method == "ablation_greedy"
    train_with(callback, tmp_path)
    assert callback.result["pruned"] == {"method": "ablation_greedy",
                                         "dropped": [callback.result["ablation_order"][0]["layer"]]}


def test_prune_at_the_end_of_training(tmp_path):
    callback = LayerImportanceCallback(methods=("block_influence",), prune_to=1, prune_method="block_influence")
    model, _ = train_with(callback, tmp_path)
    assert len(find_layer_stacks(model)[0].layers) == 1
    assert callback.result["pruned"]["dropped"] == least_important(callback.result["scores"]["block_influence"], 1)
    heal(model, toy_data(), TrainingArguments(output_dir=str(tmp_path / "heal"), max_steps=2, report_to=[],
                                              use_cpu=True, save_strategy="no", disable_tqdm=True))


def test_compression_plan_reports_ratios():
    model = tiny_model("bert")
    batch = {k: v for k, v in batches(1)[0].items() if k != "labels"}
    plan = compression_plan(model, [0.3, 0.1], targets=[1], batch=batch,
                            evaluate=lambda m: len(find_layer_stacks(m)[0].layers))
    assert plan[0]["dropped"] == [1] and plan[0]["kept"] == [0] and plan[0]["metric"] == 1
    assert plan[0]["layer_ratio"] == 0.5 and 0 < plan[0]["parameter_ratio"] < 1 and plan[0]["speedup"] > 0
    assert len(find_layer_stacks(model)[0].layers) == 2  # the plan prunes copies


def test_adapter_drop():
    model = get_peft_model(tiny_model("bert"), BottleneckConfig(task_type="SEQ_CLS", init_weights=False)).eval()
    inputs = tiny_inputs("bert")
    with torch.no_grad():
        full = model(**inputs).logits
        set_adapter_drop(model, [0])
        lower_dropped = model(**inputs).logits
        set_adapter_drop(model, [0, 1])
        all_dropped = model(**inputs).logits
        set_adapter_drop(model, [])
        with model.disable_adapter():
            base = model(**inputs).logits
        again = model(**inputs).logits
    assert not torch.allclose(lower_dropped, full) and not torch.allclose(lower_dropped, base)
    assert torch.equal(all_dropped, base) and torch.equal(again, full)


def test_adapter_drop_during_training(tmp_path):
    model = get_peft_model(tiny_model("bert"), BottleneckConfig(task_type="SEQ_CLS"))
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, report_to=[], use_cpu=True,
                             save_strategy="no", disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=toy_data(), callbacks=[AdapterDropCallback(max_layers=2)]).train()
    assert not any(getattr(m, "skip_adapters", False) for m in model.modules())


def test_unknown_method_and_bad_prune_method():
    with pytest.raises(ValueError, match="Unknown importance method"):
        LayerScorer(tiny_model("bert"), methods=("magic",))
    with pytest.raises(ValueError, match="prune_method"):
        LayerImportanceCallback(prune_method="magic")
    with pytest.raises(ValueError, match="calibration_batches"):
        LayerImportanceCallback(prune_method="ablation")
    with pytest.raises(ValueError, match="calibration_batches"):
        LayerImportanceCallback(prune_method="ablation_greedy")
    with pytest.raises(ValueError, match="scored `methods`"):
        LayerImportanceCallback(methods=("block_influence",), prune_to=2)
