"""Timing helpers shared by our speed benchmark and the AdapterHub peer (which runs in its own venv, so this file
imports only torch and transformers)."""

from __future__ import annotations

import math
import statistics
import time

import torch


def bert_base_config_kwargs(quick: bool) -> dict:
    # bert-base: 12 layers x 768 (transformers' BertConfig defaults); --quick: a small shape to test the scripts
    return dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512) if quick else {}


# SmolLM2-135M's shape (30 x 576, GQA 9/3 heads, vocab 49152, tied): the peer builds it from these numbers
SMOLLM2_SHAPE = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                     num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=8192)


def random_batch(vocab_size: int, batch_size: int, length: int, causal: bool = False) -> dict:
    """Token ids in a fixed random draw; labels for sequence classification (one per example) or causal LM."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab_size, (batch_size, length), generator=generator)
    labels = ids.clone() if causal else torch.zeros(batch_size, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_train_memory_mb(model, batch: dict, steps: int = 2) -> dict:
    """Peak resident memory (MB) of this process while it runs ``steps`` train steps, and the resident memory
    before them. Linux only: the high-water mark is reset through /proc/self/clear_refs, so the model's load does
    not count. Run one model per process, or the others' memory counts too."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    for _ in range(steps):
        time_train_step(model, batch, optimizer)
    return {"rss_before_mb": before / 1024, "peak_rss_mb": _status_kib("VmHWM") / 1024}


def time_forward(model, batch) -> float:
    model.eval()
    with torch.inference_mode():
        start = time.perf_counter()
        model(**batch)
        return time.perf_counter() - start


def time_train_step(model, batch, optimizer) -> float:
    model.train()
    start = time.perf_counter()
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def measure(models: dict, batch: dict, rounds: int) -> dict:
    """Median forward and train-step seconds per model, timed in interleaved rounds after one warm-up each."""
    optimizers = {
        name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5) for name, m in models.items()
    }
    forward = {name: [] for name in models}
    train = {name: [] for name in models}
    for name, model in models.items():
        time_forward(model, batch)
        time_train_step(model, batch, optimizers[name])
    for _ in range(rounds):
        for name, model in models.items():
            forward[name].append(time_forward(model, batch))
            train[name].append(time_train_step(model, batch, optimizers[name]))
    return {
        name: {
            "forward_s": statistics.median(forward[name]),
            "train_step_s": statistics.median(train[name]),
            "trainable_params": sum(p.numel() for p in models[name].parameters() if p.requires_grad),
        }
        for name in models
    }


def measure_forward(runs: dict, rounds: int) -> dict:
    """Median seconds of each zero-argument callable, timed in interleaved rounds after one warm-up each."""
    with torch.inference_mode():
        for run in runs.values():
            run()
        times = timed_rounds(runs, rounds)
    return {name: statistics.median(values) for name, values in times.items()}


def timed_rounds(runs: dict, rounds: int) -> dict:
    """Seconds of each zero-argument callable per round, every callable once per round, the order rotating from
    round to round (so none always runs first, right after another's memory was freed)."""
    names = list(runs)
    times = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return times


def paired_ratios(times: dict, name: str, base: str) -> list[float]:
    """``name``'s seconds over ``base``'s, round by round: the two ran side by side, so the machine's drift between
    rounds (here +-10% on the same forward) cancels out of each ratio."""
    return [t / b for t, b in zip(times[name], times[base])]


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for the median: the order statistics whose ranks a Binomial(n, 1/2) puts
    ``confidence`` between (n >= 6; else the range)."""
    ordered, n = sorted(values), len(values)
    if n < 6:
        return ordered[0], ordered[-1]
    cumulative, low = 0.0, 0
    while True:  # the largest k with P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2
        step = math.comb(n, low) / 2 ** n
        if cumulative + step > (1 - confidence) / 2:
            break
        cumulative += step
        low += 1
    low = max(low, 1)
    return ordered[low - 1], ordered[n - low]
