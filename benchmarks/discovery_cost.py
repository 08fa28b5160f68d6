"""What finding adapter positions from the model costs, against loading the model: SmolLM2-135M (30 layers).

SmolLM2 is a Llama, which the architecture table names; the discovery path is timed with the table entry set aside,
as any architecture outside the table takes it. Figures: median of ``--repeats`` runs, each on a freshly loaded
model (discovery is probed once per model, so the second ``get_peft_model`` on the same tuner costs nothing more).

    python benchmarks/discovery_cost.py            # target: discovery < 10% of the load time
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from peft_bottleneck import BottleneckConfig, bundled
from peft_bottleneck.discovery import discover
from peft_bottleneck.target_modules import ADAPTER_POSITIONS

RESULTS = Path(__file__).resolve().parent / "results" / "discovery_cost.json"


def measure(repeats: int) -> dict:
    from peft import get_peft_model

    path = bundled.smollm2_path()
    load, probe, with_table, with_discovery = [], [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        load.append(time.perf_counter() - start)
        start = time.perf_counter()
        found = discover(model)
        probe.append(time.perf_counter() - start)
        start = time.perf_counter()
        get_peft_model(model, BottleneckConfig(task_type="CAUSAL_LM")).unload()
        with_table.append(time.perf_counter() - start)
        entry = ADAPTER_POSITIONS.pop("llama")
        try:
            start = time.perf_counter()
            peft_model = get_peft_model(model, BottleneckConfig(task_type="CAUSAL_LM"))
            with_discovery.append(time.perf_counter() - start)
        finally:
            ADAPTER_POSITIONS["llama"] = entry
        layers = len(found.towers[0].sublayers) // 2
        targets = len(peft_model.base_model.targeted_module_names)
        del model, peft_model
    median = statistics.median
    return {
        "model": "SmolLM2-135M (bundled GGUF, dequantized, float32)", "layers": layers, "targets": targets,
        "repeats": repeats, "load_s": median(load), "discover_s": median(probe),
        "get_peft_model_table_s": median(with_table), "get_peft_model_discovery_s": median(with_discovery),
        "discover_share_of_load": median(probe) / median(load), "target": "< 0.10 of the load time",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    result = measure(parser.parse_args().repeats)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
