"""AdapterHub `adapters` peer for benchmarks/speed.py. Runs in its own venv (adapters pins transformers 4.57):

    python -m venv .venv-adapterhub && .venv-adapterhub/bin/pip install torch==2.13.0 adapters
    .venv-adapterhub/bin/python benchmarks/adapterhub_speed.py --output peer.json

speed.py launches it itself when given --adapterhub-python. Prints nothing but progress; writes JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import bert_base_config_kwargs, measure, random_batch  # noqa: E402

# our variant name -> AdapterHub config string
PRESETS = {
    "houlsby": "double_seq_bn",
    "pfeiffer": "seq_bn",
    "parallel": "par_bn",
    "compacter": "compacter",
    "compacter++": "compacter++",
}


def main(argv=None):
    import adapters
    import transformers
    from transformers import BertConfig, BertForSequenceClassification

    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--variants", nargs="*", default=list(PRESETS))
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    base = BertForSequenceClassification(BertConfig(**bert_base_config_kwargs(args.quick))).eval()
    models = {"base": copy.deepcopy(base)}
    for name in args.variants:
        model = copy.deepcopy(base)
        adapters.init(model)
        model.add_adapter(name, config=PRESETS[name])
        model.train_adapter(name)
        models[name] = model
    results = measure(models, random_batch(base.config.vocab_size, args.batch_size, args.length), args.rounds)
    with open(args.output, "w") as f:
        json.dump({"versions": {"adapters": adapters.__version__, "transformers": transformers.__version__,
                                "torch": torch.__version__}, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
