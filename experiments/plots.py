"""Figures of one run: curves, feature quantiles, confusion matrix.

Each function returns a bare :class:`matplotlib.figure.Figure` (no pyplot): no GUI
backend is involved, the process-wide backend is left alone, and nothing lingers in
pyplot's registry. The caller logs the figure and drops it.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from experiments import metric_names as names
from experiments.metric_names import epoch_key


def curves(history: Mapping[str, Sequence[float]], best_epoch: int | None = None) -> Figure:
    """Loss, accuracy and F1 per epoch, train vs val. history: ``epoch/<name>`` → values."""
    epochs = np.arange(1, len(history[epoch_key(names.TRAIN_LOSS)]) + 1)
    fig = Figure(figsize=(13, 3.6))
    axes = fig.subplots(1, 3)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.15, top=0.9, wspace=0.18)
    f1_micro, f1_macro = names.VAL_SCORES[1:]
    panels = [
        ("loss", [("train", names.TRAIN_LOSS), ("val", names.VAL_LOSS)]),
        ("accuracy", [("train", names.TRAIN_ACC), ("val", names.VAL_SCORES[0])]),
        ("F1", [("val micro", f1_micro), ("val macro", f1_macro)]),
    ]
    for ax, (title, series) in zip(axes, panels):
        for label, key in series:
            ax.plot(epochs, history[epoch_key(key)], marker="o", ms=3, label=label)
        if best_epoch:
            ax.axvline(best_epoch, color="grey", ls="--", lw=1, label="best")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right" if title == "loss" else "lower right")
    return fig


def quantiles(history: Mapping[str, Sequence[float]], quantile_names: Sequence[str]) -> Figure:
    """Percentiles of the probed feature vector across epochs."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    fig.subplots_adjust(left=0.12, right=0.8, bottom=0.12, top=0.92)
    for name in quantile_names:
        values = history[epoch_key(name)]
        ax.plot(np.arange(1, len(values) + 1), values, marker="o", ms=3, label=name.replace("feat_", ""))
    ax.set_title("penultimate features of the first validation example")
    ax.set_xlabel("epoch")
    ax.set_ylabel("feature value")
    ax.grid(alpha=0.3)
    ax.legend(title="percentile", loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], title: str = "test") -> Figure:
    """Row-normalised heat map with the raw counts written in each cell."""
    counts = np.asarray(matrix)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    k = len(class_names)
    size = max(4.0, 0.55 * k + 2)
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    fig.subplots_adjust(left=0.16, right=0.95, bottom=0.16, top=0.93)
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix ({title})")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return fig
