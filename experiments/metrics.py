"""Classification metrics, computed by scikit-learn on predicted and true labels."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

from experiments.metric_names import SCORES  # acc, f1_micro, f1_macro: the order of the values below


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, prefix: str, num_classes: int) -> dict[str, float]:
    """Accuracy, F1 micro and F1 macro as ``{prefix}_acc``, ``{prefix}_f1_micro``, ``{prefix}_f1_macro``.

    F1 macro averages over all ``num_classes`` classes: a class that neither ``y_true`` nor
    ``y_pred`` holds (a small split) counts as an F1 of 0 instead of leaving the average.
    """
    values = (
        accuracy_score(y_true, y_pred),
        f1_score(y_true, y_pred, average="micro"),
        f1_score(y_true, y_pred, labels=list(range(num_classes)), average="macro", zero_division=0),
    )
    return {f"{prefix}_{score}": float(v) for score, v in zip(SCORES, values)}


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with rows = true class, columns = predicted class."""
    return confusion_matrix(y_true, y_pred, labels=list(range(num_classes)))


def per_class_report(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """scikit-learn's classification report as a dict (precision, recall, F1, support per class)."""
    return classification_report(
        y_true,
        y_pred,
        labels=list(range(len(class_names))),
        target_names=list(class_names),
        output_dict=True,
        zero_division=0,
    )
