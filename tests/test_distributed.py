"""Data parallel and sharded training on CPU (gloo, ``torchrun``, the HF Trainer) for every tuner type: both ranks end
with the same adapter, equal to one process over the same global batches, saved once and loadable; per-example task
routing works when one rank never sees a task. ``tests/distributed_worker.py`` does the training."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model, get_peft_model_state_dict
from safetensors.torch import load_file

import peft_bottleneck as pb
from distributed_worker import CASES, ROUTED, dataset, model_for

WORKER = Path(__file__).with_name("distributed_worker.py")


def free_port() -> int:
    with socket.socket() as probe:  # torchrun's --master_port 0 hangs in the rendezvous here
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(out: Path, *flags: str, processes: int = 2) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
           "PYTHONPATH": os.pathsep.join([str(WORKER.parent),
                                                                                 os.environ.get("PYTHONPATH", "")])}
    if processes == 1:
        command = [sys.executable, str(WORKER), str(out), "--single", *flags]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--master_port", str(free_port()), str(WORKER), str(out), *flags]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    launch(out)
    launch(out, processes=1)
    return out


def get_peft_model_for(case: str):
    return get_peft_model(model_for(case), CASES[case]())


def first_batch(case: str) -> dict:
    rows = dataset(case)[:4]
    batch = {"input_ids": torch.tensor(rows["input_ids"]), "attention_mask": torch.tensor(rows["attention_mask"])}
    if case in ROUTED:
        batch["task"] = rows["task"]
    return batch


@pytest.mark.parametrize("case", list(CASES))
def test_ddp_ranks_agree_with_one_process_and_save_once(ddp_runs, case):
    rank0, rank1, single = (load_file(str(ddp_runs / case / f"{run}.safetensors")) for run in ("rank0", "rank1",
                                                                                                 "single"))
    assert rank0.keys() == rank1.keys() == single.keys() and rank0
    fresh = get_peft_model_state_dict(get_peft_model_for(case))
    assert any(not torch.equal(rank0[k], fresh[k]) for k in rank0), "training changed nothing"
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key  # DDP keeps the replicas bit-identical
        torch.testing.assert_close(rank0[key], single[key], rtol=1e-4, atol=1e-6, msg=key)
    logs = {run: json.loads((ddp_runs / case / f"{run}.json").read_text()) for run in ("rank0", "rank1", "single")}
    assert logs["rank0"]["should_save"] and not logs["rank1"]["should_save"]
    assert logs["rank0"]["losses"] == pytest.approx(logs["single"]["losses"], rel=1e-4)

    saved = PeftModel.from_pretrained(model_for(case), str(ddp_runs / case / "saved-ddp")).eval()
    loaded = get_peft_model_state_dict(saved)
    for key in rank0:
        assert torch.equal(loaded[key], rank0[key]), key
    with torch.no_grad():
        assert torch.isfinite(saved(**first_batch(case)).logits).all()


def test_the_controller_rank_that_never_sees_a_task_still_updates_it(ddp_runs):
    """Rank 1's batches hold task a only; task b's route still trains (its gradient comes from rank 0 through the
    all-reduce) and no unused-parameter error is raised: every route of a layer is a row of one parameter."""
    rows = dataset("controller")
    rank1_tasks = {t for i, t in enumerate(rows["task"]) if i % 4 >= 2}
    assert rank1_tasks == {"a"}
    trained = load_file(str(ddp_runs / "controller" / "rank1.safetensors"))
    fresh = get_peft_model_state_dict(get_peft_model_for("controller"))
    up = next(k for k in trained if k.endswith("up_weight"))
    assert not torch.equal(trained[up][1], fresh[up][1])  # route 1 = task b


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    launch(out, "--fsdp")
    launch(out, "--fsdp", processes=1)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_fsdp2_trains_sharded_and_saves_the_full_adapter_that_loads_unsharded(fsdp_runs, case):
    model = get_peft_model_for(case)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    logs = {run: json.loads((fsdp_runs / case / f"sharded-{run}.json").read_text()) for run in ("rank0", "single")}
    assert logs["rank0"]["sharded_trainable"] == len(trainable)  # every adapter tensor was a DTensor shard
    assert logs["single"]["sharded_trainable"] == 0
    assert logs["rank0"]["losses"][0] != logs["single"]["losses"][0]  # each rank saw half of the batch ...
    sharded, single = (load_file(str(fsdp_runs / case / f"sharded-{run}" / "adapter_model.safetensors"))
                       for run in ("rank0", "single"))
    fresh = {k.replace(".default", ""): v for k, v in get_peft_model_state_dict(model).items()}
    assert sharded.keys() == single.keys() == fresh.keys()
    for key in single:
        assert sharded[key].shape == fresh[key].shape, key  # gathered, not one rank's shard
        torch.testing.assert_close(sharded[key], single[key], rtol=1e-4, atol=1e-6, msg=key)  # ... and averaged
    assert any(not torch.equal(single[k], fresh[k]) for k in single), "training changed nothing"
    assert not (fsdp_runs / case / "sharded-rank1").exists()

    batch = first_batch(case)
    with torch.no_grad():
        outputs = [PeftModel.from_pretrained(model_for(case), str(fsdp_runs / case / f"sharded-{run}")).eval()(
            **batch).logits for run in ("rank0", "single")]
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)


def test_the_fsdp_units_are_the_plain_base_modules_and_never_an_adapter_or_a_tied_weight():
    model = get_peft_model(model_for("lm_head"), pb.OutputAdapterConfig(task_type="CAUSAL_LM"))
    units = pb.distributed.base_modules_to_shard(model)
    names = {name for name, module in model.named_modules() if any(module is u for u in units)}
    assert model.get_base_model().config.tie_word_embeddings
    assert not any("embed_tokens" in n or "lm_head" in n for n in names)  # tied: both stay in the root unit
    assert any(n.endswith("q_proj") for n in names)
    assert all(not any(p.requires_grad for p in u.parameters()) for u in units)
    compacter = get_peft_model(model_for("compacter"), CASES["compacter"]())
    layers = [m for m in compacter.modules() if isinstance(m, pb.tuners.base.AdapterLayer)]
    adapter = {id(p) for m in layers for p in m.parameters()}
    adapter -= {id(p) for m in layers for p in m.base_layer.parameters()}
    units = pb.distributed.base_modules_to_shard(compacter)
    assert adapter and not any(id(p) in adapter for u in units for p in u.parameters())


@pytest.fixture(scope="module")
def zero_runs(ddp_runs):
    pytest.importorskip("deepspeed")
    for stage in (2, 3):
        launch(ddp_runs, "--zero", str(stage))
    return ddp_runs


@pytest.mark.parametrize("stage", [2, 3])
@pytest.mark.parametrize("case", list(CASES))
def test_deepspeed_zero_trains_like_one_process_and_saves_the_whole_adapter(zero_runs, case, stage):
    single = load_file(str(zero_runs / case / "single.safetensors"))
    saved = load_file(str(zero_runs / case / f"saved-zero{stage}" / "adapter_model.safetensors"))
    single_saved = load_file(str(zero_runs / case / "saved-single" / "adapter_model.safetensors"))
    assert saved.keys() == single_saved.keys() and saved
    for key in saved:  # gathered whole (ZeRO-3 partitions each tensor), equal to one process over the same batches
        torch.testing.assert_close(saved[key], single_saved[key], rtol=1e-4, atol=1e-6, msg=key)
    if stage == 2:  # the optimizer state is partitioned, the parameters are not: each rank holds them whole
        ranks = [load_file(str(zero_runs / case / f"rank{r}-zero2.safetensors")) for r in (0, 1)]
        for key in single:
            assert torch.equal(ranks[0][key], ranks[1][key]), key
    logs = {run: json.loads((zero_runs / case / f"{run}.json").read_text()) for run in (f"rank0-zero{stage}",
                                                                                        f"rank1-zero{stage}", "single")}
    assert logs[f"rank0-zero{stage}"]["should_save"] and not logs[f"rank1-zero{stage}"]["should_save"]
    assert logs[f"rank0-zero{stage}"]["losses"] == pytest.approx(logs["single"]["losses"], rel=1e-4)
    with torch.no_grad():
        loaded = PeftModel.from_pretrained(model_for(case), str(zero_runs / case / f"saved-zero{stage}")).eval()
        assert torch.isfinite(loaded(**first_batch(case)).logits).all()
