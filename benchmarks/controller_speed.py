"""Cost of a mixed-task batch through the task-routed controller, against the base model and PEFT LoRA.

    python benchmarks/controller_speed.py           # bert-base shape, batch 32 over 8 tasks, length 64
    python benchmarks/controller_speed.py --quick

Rows (forward only, inference mode, median of interleaved rounds, ratio to the base model of the same rounds):
- controller, mixed: 32 examples spread over 8 tasks (4 each), Houlsby adapters (reduction factor 16);
- controller, one task: the same batch, all routed to one task;
- hypernetwork controller, mixed: the same mix through ``HyperAdapterConfig`` (every layer's adapters generated per
  forward from the task embeddings by the shared hypernetwork); its parameters per task are what ``add_task`` adds
  (one task embedding; the shared hypernetwork is reported separately);
- our bottleneck, mixed `adapter_names`: 8 separately named Houlsby adapters, the same mix;
- PEFT LoRA, mixed `adapter_names`: 8 LoRA adapters of about the same trainable size (r=48 on query/value).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys

import torch
from peft import LoraConfig, get_peft_model
from transformers import BertConfig, BertForSequenceClassification

from peft_bottleneck import AdapterControllerConfig, BottleneckConfig, HyperAdapterConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import bert_base_config_kwargs, measure_forward, random_batch  # noqa: E402


def trainable_per_task(model, count: int) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "classifier" not in n and (
        "adapter_controller_" in n or "bottleneck_" in n or "lora_" in n)) // count


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--lora-rank", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    base = BertForSequenceClassification(BertConfig(**bert_base_config_kwargs(args.quick))).eval()
    batch = random_batch(base.config.vocab_size, args.batch_size, args.length)
    batch.pop("labels")
    tasks = [f"task{i}" for i in range(args.tasks)]
    mixed = [tasks[i % args.tasks] for i in range(args.batch_size)]

    controller = get_peft_model(copy.deepcopy(base), AdapterControllerConfig(
        tasks=tasks, adapter=BottleneckConfig(init_weights=False), task_type="SEQ_CLS")).eval()
    hyper = get_peft_model(copy.deepcopy(base), AdapterControllerConfig(
        tasks=tasks, adapter=HyperAdapterConfig(init_weights=False), task_type="SEQ_CLS")).eval()
    named = get_peft_model(copy.deepcopy(base), BottleneckConfig(task_type="SEQ_CLS", init_weights=False))
    lora = get_peft_model(copy.deepcopy(base), LoraConfig(task_type="SEQ_CLS", r=args.lora_rank,
                                                          target_modules=["query", "value"], init_lora_weights=False))
    for i, task in enumerate(tasks[1:]):
        named.add_adapter(task, BottleneckConfig(task_type="SEQ_CLS", init_weights=False))
        lora.add_adapter(task, LoraConfig(task_type="SEQ_CLS", r=args.lora_rank, target_modules=["query", "value"],
                                          init_lora_weights=False))
    names = ["default" if t == "task0" else t for t in mixed]
    named.eval()
    lora.eval()

    runs = {
        "base": lambda: base(**batch),
        "controller, mixed": lambda: controller(**batch, task=mixed),
        "controller, one task": lambda: controller(**batch, task="task3"),
        "hypernetwork controller, mixed": lambda: hyper(**batch, task=mixed),
        "our bottleneck, mixed adapter_names": lambda: named(**batch, adapter_names=names),
        "PEFT LoRA, mixed adapter_names": lambda: lora(**batch, adapter_names=names),
    }
    seconds = measure_forward(runs, args.rounds)
    hyper_shared = trainable(hyper) - sum(p.numel() for n, p in hyper.named_parameters() if "classifier" in n)
    hyper.base_model.add_task("one_more")
    hyper_per_task = trainable(hyper) - hyper_shared - sum(
        p.numel() for n, p in hyper.named_parameters() if "classifier" in n)
    sizes = {
        "controller, mixed": trainable_per_task(controller, args.tasks),
        "controller, one task": trainable_per_task(controller, args.tasks),
        "hypernetwork controller, mixed": hyper_per_task,
        "our bottleneck, mixed adapter_names": trainable_per_task(named, args.tasks),
        "PEFT LoRA, mixed adapter_names": trainable_per_task(lora, args.tasks),
    }
    shape = f"{base.config.num_hidden_layers}x{base.config.hidden_size}"
    print(f"\nbert-base shape ({shape}), batch {args.batch_size} over {args.tasks} tasks, length {args.length}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} interleaved rounds")
    print("| variant | forward (s) | forward / base | adapter params per task |")
    print("|---|---|---|---|")
    for name, value in seconds.items():
        size = f"{sizes[name]:,}" if name in sizes else "-"
        print(f"| {name} | {value:.3f} | {value / seconds['base']:.3f} | {size} |")
    print(f"hypernetwork controller: {hyper_shared:,} trainable parameters with {args.tasks} tasks (shared "
          "hypernetwork, task and module embeddings)")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"shape": shape, "args": vars(args), "seconds": seconds, "params_per_task": sizes,
                       "hypernetwork_trainable": hyper_shared}, f, indent=2)


if __name__ == "__main__":
    main()
