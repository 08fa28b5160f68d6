"""Accuracy and macro-F1 as an `evaluate` module, loaded from this file so nothing is fetched from the Hub."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Accuracy and macro-averaged F1 over integer class labels."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class ids.
    references (list of int): true class ids.
Returns:
    accuracy (float): fraction of correct predictions.
    macro_f1 (float): unweighted mean of the per-class F1 scores over the classes seen in either list.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Classification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        predictions, references = np.asarray(predictions), np.asarray(references)
        f1_scores = []
        for label in np.union1d(predictions, references):
            true_positive = np.sum((predictions == label) & (references == label))
            predicted, actual = np.sum(predictions == label), np.sum(references == label)
            f1_scores.append(2 * true_positive / (predicted + actual) if predicted + actual else 0.0)
        return {"accuracy": float(np.mean(predictions == references)), "macro_f1": float(np.mean(f1_scores))}
