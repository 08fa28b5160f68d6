"""Trains every tuner type for a few steps with the HF Trainer and writes what the test compares.

    torchrun --nproc_per_node 2 tests/distributed_worker.py OUT [--fsdp]  # data parallel (or FSDP2) on CPU, gloo
    python tests/distributed_worker.py OUT --single [--fsdp]           # the same global batches in one process
    DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 tests/distributed_worker.py OUT --zero 2   # DeepSpeed ZeRO-2 / 3

Per case, ``OUT/<case>/`` gets ``<run>.safetensors`` (each rank's trained adapter tensors, or the single run's),
``<run>.json`` (losses, whether the Trainer let this process save) and ``saved-<mode>/`` (``save_model``;
mode ``single``, ``ddp``, ``zero2`` or ``zero3``, run names get a ``-zero<N>`` suffix). Batches are sequential, so
rank r of 2 sees per-device batches r, r + 2, ... and their union per step is the single run's batch of 4. In the
controller case rank 1 only ever sees task ``a``. With ``--fsdp`` the files are ``sharded-<run>.json`` and, from
rank 0, ``sharded-<run>/`` (the gathered full adapter state).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from datasets import Dataset
from peft import get_peft_model, get_peft_model_state_dict
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor
from transformers import Trainer, TrainingArguments
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peft_bottleneck as pb  # noqa: E402
from conftest import CONFIGS, VOCAB  # noqa: E402
import transformers as tf  # noqa: E402

STEPS, GLOBAL_BATCH, LENGTH = 4, 4, 8


def model_for(case: str):
    torch.manual_seed(0)
    if case == "lm_head":
        config = CONFIGS["llama"]()
        return tf.AutoModelForCausalLM.from_config(config)
    config = CONFIGS["bert"]()
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0  # ranks would draw different masks
    config.num_labels = 5
    return tf.AutoModelForSequenceClassification.from_config(config)


CASES = {
    "houlsby": lambda: pb.BottleneckConfig(task_type="SEQ_CLS"),
    "pfeiffer": lambda: pb.BottleneckConfig(task_type="SEQ_CLS", placement="pfeiffer"),
    "parallel": lambda: pb.ParallelAdapterConfig(task_type="SEQ_CLS"),
    "compacter": lambda: pb.CompacterConfig(task_type="SEQ_CLS", reduction_factor=4),
    "low_rank": lambda: pb.LowRankConfig(task_type="SEQ_CLS"),
    "controller": lambda: pb.AdapterControllerConfig(tasks=["a", "b"], task_type="SEQ_CLS"),
    "hyper": lambda: pb.AdapterControllerConfig(tasks=["a", "b"], task_type="SEQ_CLS", adapter=pb.HyperAdapterConfig(
        task_embedding_dim=8, hypernetwork_dim=8)),
    "lm_head": lambda: pb.OutputAdapterConfig(task_type="CAUSAL_LM"),
}
ROUTED = ("controller", "hyper")


def dataset(case: str) -> Dataset:
    generator = torch.Generator().manual_seed(7)
    n = STEPS * GLOBAL_BATCH
    ids = torch.randint(3, VOCAB, (n, LENGTH), generator=generator)
    rows = {"input_ids": ids.tolist(), "attention_mask": [[1] * LENGTH] * n}
    if case == "lm_head":
        rows["labels"] = ids.tolist()
        return Dataset.from_dict(rows)
    # examples 4k, 4k + 1 form rank 0's batch (tasks b, a), 4k + 2, 4k + 3 rank 1's (a, a)
    tasks = ["b", "a", "a", "a"] * STEPS
    labels = torch.randint(0, 2, (n,), generator=generator)
    rows["labels"] = [int(y) + (2 if t == "b" and case in ROUTED else 0) for y, t in zip(labels, tasks)]
    if case in ROUTED:
        rows["task"] = tasks
    return Dataset.from_dict(rows)


def collator(case: str):
    def pad_free(features):
        return {k: torch.tensor([f[k] for f in features]) for k in features[0]}

    return pb.TaskCollator(["a", "b"], pad_free) if case in ROUTED else pad_free


def deepspeed_config(stage: int) -> dict:
    """ZeRO ``stage`` with the Trainer's optimizer (torch AdamW) and batch sizes, so runs compare to plain DDP."""
    return {"zero_optimization": {"stage": stage}, "train_micro_batch_size_per_gpu": "auto",
            "train_batch_size": "auto", "gradient_accumulation_steps": "auto", "gradient_clipping": "auto"}


def train(case: str, out: Path, run: str, world: int, zero_stage: int | None = None) -> None:
    model = get_peft_model(model_for(case), CASES[case]())
    args = TrainingArguments(
        output_dir=str(out / "trainer"), per_device_train_batch_size=GLOBAL_BATCH // world, max_steps=STEPS,
        learning_rate=1e-2, lr_scheduler_type="constant", train_sampling_strategy="sequential", report_to=[],
        save_strategy="no", logging_steps=1, disable_tqdm=True, use_cpu=True, seed=0, dataloader_num_workers=0,
        remove_unused_columns=case not in ROUTED,
        # transformers 5.24: True multiplies a model's own mean loss by the number of processes (DDP then sums it);
        # TaskMaskedLoss divides by the global example count itself, so it keeps the default
        average_tokens_across_devices=case in ROUTED,
        ddp_backend="gloo" if world > 1 else None,
        # every adapter parameter, each route of a routed layer included (a row of one tensor), gets a gradient on
        # every step, so DDP needs no unused-parameter search, and an unused one would fail loudly here
        ddp_find_unused_parameters=False,
        deepspeed=deepspeed_config(zero_stage) if zero_stage is not None else None,
    )
    loss = pb.TaskMaskedLoss({"a": 2, "b": 3}) if case in ROUTED else None
    trainer = Trainer(model=model, args=args, train_dataset=dataset(case), data_collator=collator(case),
                      compute_loss_func=loss)
    trainer.train()
    case_dir = out / case
    case_dir.mkdir(parents=True, exist_ok=True)
    if zero_stage != 3:  # ZeRO-3 partitions the parameters themselves: only the saved checkpoint holds them whole
        state = get_peft_model_state_dict(trainer.accelerator.unwrap_model(trainer.model))
        save_file({k: v.detach().contiguous() for k, v in state.items()}, str(case_dir / f"{run}.safetensors"))
    # every rank calls save_model (ZeRO-3 gathers the weights collectively); only the main process writes
    mode = "single" if world == 1 else f"zero{zero_stage}" if zero_stage else "ddp"
    trainer.save_model(str(case_dir / f"saved-{mode}"))
    if zero_stage:
        # TrainingArguments(deepspeed=...) switches on zero.Init for every model made after it in this process,
        # which would give the next case a different random init than its single-process run
        unset_hf_deepspeed_config()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    (case_dir / f"{run}.json").write_text(json.dumps({"losses": losses, "should_save": trainer.args.should_save}))


def train_sharded(case: str, out: Path, run: str, world: int) -> None:
    """The same global batches as ``train`` in a plain AdamW loop, the model sharded with FSDP2 across the ranks
    (``world`` 1: unsharded, the reference). accelerate enables FSDP only for GPU-like devices, so on CPU the loop is
    written out; per step it does what the Trainer does under FSDP."""
    rank = int(os.environ.get("RANK", "0"))
    model = get_peft_model(model_for(case), CASES[case]())
    if world > 1:
        pb.distributed.fully_shard_adapter_model(model, mesh=init_device_mesh("cpu", (world,)))
    sharded = [n for n, p in model.named_parameters() if p.requires_grad and isinstance(p, DTensor)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    rows, collate, per_rank = dataset(case), collator(case), GLOBAL_BATCH // world
    losses = []
    for step in range(STEPS):
        start = step * GLOBAL_BATCH + rank * per_rank
        batch = collate([rows[i] for i in range(start, start + per_rank)])
        loss = model(**batch).loss  # each rank's mean; FSDP averages the gradients: the global batch's mean
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    # the full (unsharded) adapter state, gathered onto rank 0 and saved as a plain PEFT checkpoint
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    case_dir = out / case
    case_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        model.save_pretrained(str(case_dir / f"sharded-{run}"), state_dict=full)
    (case_dir / f"sharded-{run}.json").write_text(json.dumps({"losses": losses, "sharded_trainable": len(sharded)}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--single", action="store_true")
    parser.add_argument("--fsdp", action="store_true")
    parser.add_argument("--zero", type=int, choices=(2, 3), help="DeepSpeed ZeRO stage (needs DS_ACCELERATOR=cpu)")
    parser.add_argument("--cases", nargs="+", default=list(CASES))
    args = parser.parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    run = "single" if args.single else f"rank{os.environ.get('RANK', '0')}"
    if args.fsdp and world > 1:
        dist.init_process_group("gloo")
    for case in args.cases:
        if args.fsdp:
            train_sharded(case, args.out, run, world)
        else:
            train(case, args.out, f"{run}-zero{args.zero}" if args.zero else run, world, args.zero)


if __name__ == "__main__":
    main()
