"""AdapterHub `adapters` peer for benchmarks/speed.py. Runs in its own venv (adapters pins transformers 4.57):

    python -m venv .venv-adapterhub && .venv-adapterhub/bin/pip install torch==2.13.0 adapters
    .venv-adapterhub/bin/python benchmarks/adapterhub_speed.py --shape '{"family": "bert", "config": {}}' --output x.json

speed.py launches it itself when given --adapterhub-python, with the model shape as JSON (--shape). Prints
nothing but progress; writes JSON (or, with --memory-of, one memory probe as a JSON line).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import measure, peak_train_memory_mb, random_batch  # noqa: E402

# our variant name -> AdapterHub config string
PRESETS = {
    "houlsby": "double_seq_bn",
    "pfeiffer": "seq_bn",
    "parallel": "par_bn",
    "compacter": "compacter",
    "compacter++": "compacter++",
}


def base_model(shape: dict):
    """The base model of the shape speed.py sends: {"family": "bert" | "llama", "config": {...}}, random weights."""
    from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if shape["family"] == "bert":
        return BertForSequenceClassification(BertConfig(**shape["config"])).eval()
    return LlamaForCausalLM(LlamaConfig(**shape["config"])).eval()


def adapter_config(name: str, compacter_reduction: int):
    import adapters

    if name.startswith("compacter"):  # same bottleneck as ours on shapes where 32 does not divide by phm_dim
        config_class = adapters.CompacterPlusPlusConfig if name.endswith("++") else adapters.CompacterConfig
        return config_class(reduction_factor=compacter_reduction)
    return PRESETS[name]


def with_adapter(base, name: str, compacter_reduction: int = 32):
    import adapters

    model = copy.deepcopy(base)
    if name != "base":
        adapters.init(model)
        model.add_adapter(name, config=adapter_config(name, compacter_reduction))
        model.train_adapter(name)
    return model


def main(argv=None):
    import adapters
    import transformers

    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", required=True, help="JSON from speed.py")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--variants", nargs="*", default=list(PRESETS))
    parser.add_argument("--memory-of", default=None, help="run one memory probe and print it as JSON")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)

    shape = json.loads(args.shape)
    base = base_model(shape)
    causal = shape["family"] == "llama"
    batch = random_batch(base.config.vocab_size, args.batch_size, args.length, causal=causal)
    if args.memory_of:
        model = with_adapter(base, args.memory_of, shape.get("compacter_reduction", 32))
        del base
        print(json.dumps(peak_train_memory_mb(model, batch)))
        return
    models = {name: with_adapter(base, name, shape.get("compacter_reduction", 32)) for name in ["base"] + args.variants}
    results = measure(models, batch, args.rounds)
    with open(args.output, "w") as f:
        json.dump({"versions": {"adapters": adapters.__version__, "transformers": transformers.__version__,
                                "torch": torch.__version__}, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
