"""Figures of one run (matplotlib, Agg backend): curves, feature quantiles, confusion matrix.

Each function returns a Figure; the caller logs it and closes it.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def curves(history: Mapping[str, Sequence[float]], best_epoch: int | None = None):
    """Loss, accuracy and F1 per epoch, train vs val. history: ``epoch/<name>`` → values."""
    epochs = np.arange(1, len(history["epoch/train_loss"]) + 1)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.15, top=0.9, wspace=0.18)
    panels = [
        ("loss", [("train", "epoch/train_loss"), ("val", "epoch/val_loss")]),
        ("accuracy", [("train", "epoch/train_acc"), ("val", "epoch/val_acc")]),
        ("F1", [("val micro", "epoch/val_f1_micro"), ("val macro", "epoch/val_f1_macro")]),
    ]
    for ax, (title, series) in zip(axes, panels):
        for label, key in series:
            ax.plot(epochs, history[key], marker="o", ms=3, label=label)
        if best_epoch:
            ax.axvline(best_epoch, color="grey", ls="--", lw=1, label="best")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right" if title == "loss" else "lower right")
    return fig


def quantiles(history: Mapping[str, Sequence[float]], names: Sequence[str]):
    """Percentiles of the probed feature vector across epochs."""
    fig, ax = plt.subplots(figsize=(6, 4))
    fig.subplots_adjust(left=0.12, right=0.8, bottom=0.12, top=0.92)
    for name in names:
        values = history[f"epoch/{name}"]
        ax.plot(np.arange(1, len(values) + 1), values, marker="o", ms=3, label=name.replace("feat_", ""))
    ax.set_title("penultimate features of the first validation example")
    ax.set_xlabel("epoch")
    ax.set_ylabel("feature value")
    ax.grid(alpha=0.3)
    ax.legend(title="percentile", loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], title: str = "test"):
    """Row-normalised heat map with the raw counts written in each cell."""
    counts = np.asarray(matrix)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    k = len(class_names)
    size = max(4.0, 0.55 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size))
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
