"""The recommended learning rate per adapter kind: every kind maps to its rate, and the table is the one the
benchmark chose (benchmarks/learning_rates.py writes benchmarks/results/learning_rates.json from stored runs)."""

import json
from pathlib import Path

import pytest
import torch

from peft_bottleneck import (RECOMMENDED_HEAD_LEARNING_RATE, RECOMMENDED_LEARNING_RATES, AdapterControllerConfig,
                             BottleneckConfig, CompacterConfig, HyperAdapterConfig, LowRankConfig, OutputAdapterConfig,
                             ParallelAdapterConfig, create_adapter_optimizer, recommended_learning_rate)
from peft_bottleneck.learning_rates import adapter_kind_name

CHOSEN = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "learning_rates.json"


@pytest.mark.parametrize("config, kind", [
    (BottleneckConfig(), "houlsby"),
    (BottleneckConfig(placement="pfeiffer"), "pfeiffer"),
    (ParallelAdapterConfig(), "parallel"),
    (CompacterConfig(), "compacter"),
    (CompacterConfig(placement="pfeiffer"), "compacter++"),
    (LowRankConfig(), "low-rank"),
    (AdapterControllerConfig(tasks=["a", "b"]), "houlsby"),  # a controller trains its adapters' kind
    (AdapterControllerConfig(tasks=["a"], adapter=CompacterConfig(placement="pfeiffer")), "compacter++"),
    (AdapterControllerConfig(tasks=["a", "b"], adapter=HyperAdapterConfig()), "hypernetwork"),
])
def test_every_kind_has_its_rate(config, kind):
    assert adapter_kind_name(config) == kind
    assert recommended_learning_rate(config) == RECOMMENDED_LEARNING_RATES[kind] > 0


def test_a_config_without_a_rate_is_named():
    with pytest.raises(TypeError, match="OutputAdapterConfig.*houlsby"):
        recommended_learning_rate(OutputAdapterConfig())


def test_the_table_is_the_benchmarks_choice():
    chosen = json.loads(CHOSEN.read_text())
    assert chosen, "no kind was chosen"
    for kind, result in chosen.items():
        assert RECOMMENDED_LEARNING_RATES[kind] == result["learning_rate"], kind


# create_adapter_optimizer: the adapters at the kind's rate, a new task head at its own


def _peft(config, model_type="bert"):
    from peft import get_peft_model

    from conftest import task_type, tiny_model

    config.task_type = task_type(model_type)
    return get_peft_model(tiny_model(model_type), config)


def _groups(optimizer) -> dict:
    return {g["name"]: g for g in optimizer.param_groups}


@pytest.mark.parametrize("config", [BottleneckConfig(), CompacterConfig(placement="pfeiffer", bottleneck_size=8), LowRankConfig(),
                                    ParallelAdapterConfig()], ids=lambda c: adapter_kind_name(c))
def test_adapters_at_their_kinds_rate_and_the_head_at_the_head_rate(config):
    model = _peft(config)
    groups = _groups(create_adapter_optimizer(model))
    assert groups["adapters"]["lr"] == recommended_learning_rate(config)
    assert groups["head"]["lr"] == RECOMMENDED_HEAD_LEARNING_RATE
    named = {id(p): n for n, p in model.named_parameters()}
    head = {named[id(p)] for p in groups["head"]["params"]}
    adapters = {named[id(p)] for p in groups["adapters"]["params"]}
    assert head and all(".modules_to_save." in n for n in head)
    assert adapters and not any("classifier" in n for n in adapters)
    # every trainable tensor is in exactly one group, nothing frozen is
    assert head | adapters == {n for n, p in model.named_parameters() if p.requires_grad}
    assert not head & adapters
    assert all(g["weight_decay"] == 0.0 for g in groups.values())  # the Trainer's default, as measured


def test_given_rates_and_optimizer_arguments_win():
    model = _peft(BottleneckConfig())
    optimizer = create_adapter_optimizer(model, torch.optim.SGD, lr=0.5, head_lr=0.25, momentum=0.9)
    assert isinstance(optimizer, torch.optim.SGD)
    assert (_groups(optimizer)["adapters"]["lr"], _groups(optimizer)["head"]["lr"]) == (0.5, 0.25)
    assert all(g["momentum"] == 0.9 for g in optimizer.param_groups)


def test_a_model_without_a_new_head_has_one_group():
    optimizer = create_adapter_optimizer(_peft(BottleneckConfig(), "llama"))
    assert [g["name"] for g in optimizer.param_groups] == ["adapters"]


def test_a_controller_takes_its_adapters_kinds_rate():
    model = _peft(AdapterControllerConfig(tasks=["a", "b"], adapter=CompacterConfig(bottleneck_size=8)))
    assert _groups(create_adapter_optimizer(model))["adapters"]["lr"] == RECOMMENDED_LEARNING_RATES["compacter"]


@pytest.mark.parametrize("field", ["lr", "head_lr"])
@pytest.mark.parametrize("value", [0, -1e-3, float("nan"), float("inf"), "1e-3", True, None])
def test_bad_rates_are_named(field, value):
    if value is None:  # None means "the recommended rate": allowed
        create_adapter_optimizer(_peft(BottleneckConfig()), **{field: value})
        return
    with pytest.raises(ValueError, match=f"^{field} must be a finite number > 0"):
        create_adapter_optimizer(_peft(BottleneckConfig()), **{field: value})


def test_numpy_rates_are_numbers():
    np = pytest.importorskip("numpy")
    optimizer = create_adapter_optimizer(_peft(BottleneckConfig()), lr=np.float32(1e-3), head_lr=np.float64(0.1))
    assert sorted(g["lr"] for g in optimizer.param_groups) == pytest.approx([1e-3, 0.1])
    assert all(type(g["lr"]) is float for g in optimizer.param_groups)


def test_a_plain_model_needs_an_explicit_rate():
    from conftest import tiny_model

    with pytest.raises(TypeError, match="pass lr="):
        create_adapter_optimizer(tiny_model("bert"))
    frozen = tiny_model("bert").requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        create_adapter_optimizer(frozen, lr=1e-3)


def test_the_trainer_schedules_both_groups(tmp_path):
    """Passed to the Trainer, the warm-up / decay scales both groups and keeps their ratio; both groups move."""
    from transformers import Trainer, TrainingArguments

    from conftest import tiny_inputs

    model = _peft(BottleneckConfig(init_weights=False))
    inputs = tiny_inputs("bert", batch=4)
    rows = [{"input_ids": inputs["input_ids"][i], "attention_mask": inputs["attention_mask"][i],
             "labels": torch.tensor(i % 2)} for i in range(4)]
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = create_adapter_optimizer(model, lr=1e-3, head_lr=3e-2)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, warmup_steps=4, per_device_train_batch_size=2,
                             lr_scheduler_type="constant_with_warmup", report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=rows, optimizers=(optimizer, None))
    trainer.train()
    adapter_lr, head_lr = trainer.lr_scheduler.get_last_lr()
    assert adapter_lr == pytest.approx(1e-3 * 2 / 4) and head_lr == pytest.approx(3e-2 * 2 / 4)  # mid warm-up
    moved = {n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])}
    assert any(".modules_to_save." in n for n in moved) and any("bottleneck" in n for n in moved)
