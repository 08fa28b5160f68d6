"""Metrics shipped as local `evaluate` modules (the machine that runs them may have no Hub access)."""

from pathlib import Path

import evaluate

_CLASSIFICATION = Path(__file__).with_name("classification.py")


def load_classification_metric() -> evaluate.EvaluationModule:
    """Accuracy and macro-F1 through `evaluate`, from the module file shipped in this package."""
    return evaluate.load(str(_CLASSIFICATION))
