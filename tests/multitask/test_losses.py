"""TaskMaskedLoss: several classification tasks on one head, each example's softmax over its own task's labels."""

import pytest
import torch
import torch.nn.functional as F
from conftest import CONFIGS, VOCAB
from datasets import Dataset
from peft import get_peft_model
from transformers import BertForSequenceClassification, Trainer, TrainingArguments

from peft_bottleneck import AdapterControllerConfig, BottleneckConfig, TaskCollator, TaskMaskedLoss

COUNTS = {"sentiment": 2, "topic": 3}


def test_loss_is_cross_entropy_over_the_own_task_slice():
    loss_fn = TaskMaskedLoss(COUNTS)
    assert loss_fn.offsets == {"sentiment": 0, "topic": 2}
    logits = torch.randn(4, 5, requires_grad=True)
    labels = torch.tensor([1, 3, 0, 4])
    loss = loss_fn({"logits": logits}, labels)
    expected = torch.stack([
        F.cross_entropy(logits[0:1, 0:2], labels[0:1]), F.cross_entropy(logits[1:2, 2:5], labels[1:2] - 2),
        F.cross_entropy(logits[2:3, 0:2], labels[2:3]), F.cross_entropy(logits[3:4, 2:5], labels[3:4] - 2),
    ]).mean()
    assert torch.allclose(loss, expected)
    loss.backward()
    assert torch.count_nonzero(logits.grad[[0, 2]][:, 2:]) == 0  # sentiment examples leave topic logits alone
    assert torch.count_nonzero(logits.grad[[1, 3]][:, :2]) == 0
    assert loss_fn.logits_of(logits, "topic").shape == (4, 3)


def test_num_items_in_batch_scales_the_sum():
    loss_fn = TaskMaskedLoss(COUNTS)
    logits, labels = torch.randn(4, 5), torch.tensor([1, 3, 0, 4])
    assert torch.allclose(loss_fn((logits,), labels, num_items_in_batch=8), loss_fn((logits,), labels) / 2)


def test_errors_name_the_field():
    with pytest.raises(ValueError, match="label_counts"):
        TaskMaskedLoss({"a": 0})
    with pytest.raises(ValueError, match="sums to 5"):
        TaskMaskedLoss(COUNTS)({"logits": torch.randn(2, 7)}, torch.tensor([0, 1]))


def test_trainer_uses_it_with_the_controller(tmp_path):
    config = CONFIGS["bert"]()
    config.num_labels = 5
    torch.manual_seed(0)
    model = get_peft_model(BertForSequenceClassification(config), AdapterControllerConfig(
        tasks=list(COUNTS), adapter=BottleneckConfig(), task_type="SEQ_CLS"))
    ids = torch.randint(3, VOCAB, (16, 6), generator=torch.Generator().manual_seed(0))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * 6] * 16,
                              "labels": [0, 2, 1, 4] * 4, "task": ["sentiment", "topic"] * 8})
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=2, report_to=[],
                             use_cpu=True, remove_unused_columns=False, disable_tqdm=True, save_strategy="no",
                             logging_steps=1)
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=TaskCollator(list(COUNTS)),
                      compute_loss_func=TaskMaskedLoss(COUNTS))
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 2 and all(0 < loss < 10 for loss in losses)
