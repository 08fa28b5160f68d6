"""Data parallel and sharded training on CPU (gloo, ``torchrun``, the HF Trainer) for every tuner type: both ranks end
with the same adapter, equal to one process over the same global batches, saved once and loadable; per-example task
routing works when one rank never sees a task. ``tests/distributed_worker.py`` does the training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model, get_peft_model_state_dict
from safetensors.torch import load_file

from distributed_worker import CASES, ROUTED, dataset, model_for

WORKER = Path(__file__).with_name("distributed_worker.py")


def launch(out: Path, *flags: str, processes: int = 2) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(WORKER.parent),
                                                                                 os.environ.get("PYTHONPATH", "")])}
    if processes == 1:
        command = [sys.executable, str(WORKER), str(out), "--single", *flags]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--master_port", "0", str(WORKER), str(out), *flags]
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

    saved = PeftModel.from_pretrained(model_for(case), str(ddp_runs / case / "saved")).eval()
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
