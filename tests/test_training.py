"""Training survives crashes and half precision: a Trainer run killed with SIGKILL after a checkpoint and resumed
ends with the weights of the uninterrupted run (a checkpoint torn by the kill is skipped, with a message); fp16 and
bf16 training of every tuner type stays finite where fp32 does."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import task_type, tiny_inputs, tiny_model
from peft import get_peft_model
from safetensors.torch import load_file

import peft_bottleneck as pb
from peft_bottleneck.training import last_complete_checkpoint

RUN = r"""
import os, sys
sys.path.insert(0, {tests!r})
import torch
from conftest import tiny_model, VOCAB
from datasets import Dataset
from peft import get_peft_model
from transformers import Trainer, TrainingArguments, TrainerCallback
import peft_bottleneck as pb
from peft_bottleneck.training import last_complete_checkpoint

kind, out, slow = sys.argv[1], sys.argv[2], sys.argv[3] == "slow"
g = torch.Generator().manual_seed(0)
ids = torch.randint(6, VOCAB, (96, 8), generator=g)
labels = torch.arange(96) % 2
ids[labels == 1, 0] = 5
columns = {{"input_ids": ids.tolist(), "attention_mask": [[1] * 8] * 96, "labels": labels.tolist()}}
collator = None
if kind == "controller":
    columns["task"] = ["a", "b"] * 48
    config = pb.AdapterControllerConfig(tasks=["a", "b"], task_type="SEQ_CLS", adapter=pb.BottleneckConfig())
    collator = pb.TaskCollator(["a", "b"])
else:
    config = pb.BottleneckConfig(task_type="SEQ_CLS")
torch.manual_seed(0)
model = get_peft_model(tiny_model("bert"), config)

class Slow(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if slow and state.global_step > 4:
            import time; time.sleep(0.5)

args = TrainingArguments(output_dir=out, per_device_train_batch_size=8, num_train_epochs=1, learning_rate=5e-3,
                         save_strategy="steps", save_steps=2, report_to=[], use_cpu=True, disable_tqdm=True,
                         seed=0, data_seed=0, remove_unused_columns=kind != "controller", logging_steps=1)
trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict(columns), data_collator=collator,
                  callbacks=[Slow()])
trainer.train(resume_from_checkpoint=last_complete_checkpoint(out))
model.save_pretrained(os.path.join(out, "final"))
print("DONE")
"""


def run(kind, out, slow=False):
    script = RUN.format(tests=str(Path(__file__).parent))
    return subprocess.Popen([sys.executable, "-c", script, kind, str(out), "slow" if slow else "fast"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")


@pytest.mark.parametrize("kind", ["bottleneck", "controller"])
def test_killed_run_resumes_to_the_same_weights(kind, tmp_path):
    reference = run(kind, tmp_path / "reference")
    out, err = reference.communicate(timeout=600)
    assert "DONE" in out, err[-3000:]

    killed = run(kind, tmp_path / "killed", slow=True)
    deadline = time.time() + 300
    while not (tmp_path / "killed" / "checkpoint-6").exists():  # two whole checkpoints, then kill mid-run
        assert killed.poll() is None and time.time() < deadline, killed.stderr.read()[-3000:]
        time.sleep(0.1)
    time.sleep(0.3)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "final").exists()
    # the kill may have torn the newest checkpoint; make sure one is torn, as a kill mid-save leaves it
    newest = max((p for p in (tmp_path / "killed").iterdir() if p.name.startswith("checkpoint-")),
                 key=lambda p: int(p.name.split("-")[1]))
    (newest / "adapter_model.safetensors").write_bytes(b"torn")

    resumed = run(kind, tmp_path / "killed")
    out, err = resumed.communicate(timeout=600)
    assert "DONE" in out, err[-3000:]
    assert f"Skipping checkpoint {newest}" in out
    expected = load_file(tmp_path / "reference" / "final" / "adapter_model.safetensors")
    got = load_file(tmp_path / "killed" / "final" / "adapter_model.safetensors")
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6)


def test_last_complete_checkpoint_without_checkpoints(tmp_path):
    assert last_complete_checkpoint(tmp_path) is None
    assert last_complete_checkpoint(tmp_path / "missing") is None


TYPES = {
    "bottleneck": lambda t: pb.BottleneckConfig(task_type=t),
    "parallel": lambda t: pb.ParallelAdapterConfig(task_type=t),
    "compacter": lambda t: pb.CompacterConfig(task_type=t, bottleneck_size=8),
    "controller": lambda t: pb.AdapterControllerConfig(tasks=["a", "b"], default_task="a", task_type=t),
}


def train_losses(model, model_type, steps=5):
    inputs = tiny_inputs(model_type)
    labels = torch.tensor([0, 1, 0]) if model_type == "bert" else inputs["input_ids"]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    model.train()
    for _ in range(steps):
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("model_type", ["bert", "llama"])
@pytest.mark.parametrize("kind", sorted(TYPES))
def test_half_precision_training_stays_finite(kind, model_type, dtype):
    make = TYPES[kind]
    reference = train_losses(get_peft_model(tiny_model(model_type), make(task_type(model_type))), model_type)
    losses = train_losses(get_peft_model(tiny_model(model_type).to(dtype), make(task_type(model_type))), model_type)
    assert all(torch.isfinite(torch.tensor(reference)))
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < losses[0]


def test_a_half_precision_head_is_kept_in_fp32_and_saved_and_reloaded(tmp_path):
    model = get_peft_model(tiny_model("bert").to(torch.float16), pb.BottleneckConfig(task_type="SEQ_CLS"))
    head = model.base_model.model.classifier.modules_to_save["default"]
    assert head.weight.dtype == torch.float32
    inputs = tiny_inputs("bert")
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.dtype == torch.float16
    model.save_pretrained(tmp_path)
    from peft import PeftModel

    loaded = PeftModel.from_pretrained(tiny_model("bert").to(torch.float16), tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, logits)
