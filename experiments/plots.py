"""Figures of one run: curves, feature quantiles, confusion matrix.

Each function returns a bare :class:`matplotlib.figure.Figure` (no pyplot): no GUI
backend is involved, the process-wide backend is left alone, and nothing lingers in
pyplot's registry.

A run draws its figures after its last epoch, on the way to FINISHED, so their cost is
part of every run. Most of it is matplotlib building axes, ticks and text layouts, not
the data: each function therefore builds its figure once per process and layout, and
later calls (the next point of a long-lived point process) only set the new data. The
returned figure is valid until the next call of the same function: log it, then drop it.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.path import Path
from matplotlib.textpath import TextPath
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import Affine2D

from experiments import metric_names as names
from experiments.metric_names import epoch_key

_BUILT: dict[tuple, Any] = {}  # layout → (figure, its artists), reused by the next call

CURVE_PANELS = (
    ("loss", (("train", names.TRAIN_LOSS), ("val", names.VAL_LOSS))),
    ("accuracy", (("train", names.TRAIN_ACC), ("val", names.VAL_SCORES[0]))),
    ("F1", (("val micro", names.VAL_SCORES[1]), ("val macro", names.VAL_SCORES[2]))),
)
MAX_ANNOTATED_CLASSES = 20  # above this the confusion matrix has no counts in its cells
COUNT_SIZE = 7  # points: the counts in the confusion matrix's cells


def curves(history: Mapping[str, Sequence[float]], best_epoch: int | None = None) -> Figure:
    """Loss, accuracy and F1 per epoch, train vs val. history: ``epoch/<name>`` → values."""
    fig, lines, best_lines = _built(("curves",), _curves_layout)
    epochs = np.arange(1, len(history[epoch_key(names.TRAIN_LOSS)]) + 1)
    for line, key in lines:
        line.set_data(epochs, history[epoch_key(key)])
    for best in best_lines:
        best.set_xdata([best_epoch or 0] * 2)
        best.set_visible(bool(best_epoch))
    _rescale(fig)
    return fig


def quantiles(history: Mapping[str, Sequence[float]], quantile_names: Sequence[str]) -> Figure:
    """Percentiles of the probed feature vector across epochs."""
    fig, lines = _built(("quantiles", tuple(quantile_names)), lambda: _quantiles_layout(quantile_names))
    for line, name in zip(lines, quantile_names):
        values = history[epoch_key(name)]
        line.set_data(np.arange(1, len(values) + 1), values)
    _rescale(fig)
    return fig


def confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], title: str = "test") -> Figure:
    """Row-normalised heat map with the raw counts (non-negative integers) written in each cell."""
    fig, image, cells = _built(("confusion", tuple(class_names), title),
                               lambda: _confusion_layout(class_names, title))
    counts = np.asarray(matrix).astype(np.int64)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    image.set_data(rates)
    if cells is not None:
        cells.set_paths([_number_outline(str(n)) for n in counts.ravel()])
        cells.set_facecolors(np.where(rates.ravel()[:, None] > 0.5, (1.0, 1.0, 1.0, 1.0), (0.0, 0.0, 0.0, 1.0)))
    return fig


@functools.cache
def _digit_outlines() -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, float], float]:
    """The outlines of 0-9 at COUNT_SIZE (vertices in points, codes), each figure's advance,
    and the height that centres a figure vertically."""
    outline = {d: TextPath((0, 0), d, size=COUNT_SIZE) for d in "0123456789"}
    zero_right = outline["0"].vertices[:, 0].max()  # a figure's advance: where a "0" after it ends, less one "0"
    advance = {d: TextPath((0, 0), d + "0", size=COUNT_SIZE).vertices[:, 0].max() - zero_right for d in outline}
    middle = (outline["0"].vertices[:, 1].min() + outline["0"].vertices[:, 1].max()) / 2
    return {d: (path.vertices, path.codes) for d, path in outline.items()}, advance, middle


def _number_outline(digits: str) -> Path:
    """A count as one path, centred on (0, 0), in points.

    The 100 counts of a 10-class matrix are one collection of such paths, drawn in one call:
    as 100 text artists (each laid out and rendered glyph by glyph) they took over a third of
    the three figures' drawing time, a fixed cost of every run."""
    outline, advance, middle = _digit_outlines()
    left = np.cumsum([0.0] + [advance[d] for d in digits])
    vertices = np.concatenate([outline[d][0] + (x, 0.0) for d, x in zip(digits, left)])
    vertices -= ((vertices[:, 0].min() + vertices[:, 0].max()) / 2, middle)  # the ink's box, as text is centred
    return Path(vertices, np.concatenate([outline[d][1] for d in digits]))


def _built(layout: tuple, build) -> Any:
    if layout not in _BUILT:
        _BUILT[layout] = build()
    return _BUILT[layout]


def _rescale(fig: Figure) -> None:
    for ax in fig.axes:
        ax.relim(visible_only=True)
        ax.autoscale_view()


def _epoch_axis(ax) -> None:
    """Whole epochs on x, and a few ticks on both axes: readable, and each tick label is
    text to lay out."""
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
    ax.grid(alpha=0.3)


def _curves_layout() -> tuple[Figure, list, list]:
    fig = Figure(figsize=(13, 3.6))
    axes = fig.subplots(1, 3)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.15, top=0.9, wspace=0.18)
    lines, best_lines = [], []
    for ax, (title, series) in zip(axes, CURVE_PANELS):
        for label, key in series:
            (line,) = ax.plot([], [], marker="o", ms=3, label=label)
            lines.append((line, key))
        best_lines.append(ax.axvline(0, color="grey", ls="--", lw=1, label="best"))
        ax.set_title(title)
        _epoch_axis(ax)
        ax.legend(loc="upper right" if title == "loss" else "lower right")
    return fig, lines, best_lines


def _quantiles_layout(quantile_names: Sequence[str]) -> tuple[Figure, list]:
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    fig.subplots_adjust(left=0.12, right=0.8, bottom=0.12, top=0.92)
    lines = [ax.plot([], [], marker="o", ms=3, label=name.replace("feat_", ""))[0] for name in quantile_names]
    ax.set_title("penultimate features of the first validation example")
    _epoch_axis(ax)
    ax.set_ylabel("feature value")
    ax.legend(title="percentile", loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig, lines


def _confusion_layout(class_names: Sequence[str], title: str) -> tuple[Figure, Any, PathCollection | None]:
    k = len(class_names)
    size = max(4.0, 0.55 * k + 2)
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    fig.subplots_adjust(left=0.16, right=0.95, bottom=0.16, top=0.93)
    image = ax.imshow(np.zeros((k, k)), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix ({title})")
    cells = None
    if k <= MAX_ANNOTATED_CLASSES:  # cell (i, j) at data (j, i); each path in points, scaled at the figure's dpi
        cells = PathCollection([], offsets=[(j, i) for i in range(k) for j in range(k)], offset_transform=ax.transData,
                               transform=Affine2D().scale(1 / 72) + fig.dpi_scale_trans, edgecolors="none")
        ax.add_collection(cells, autolim=False)
    fig.colorbar(image, ax=ax, fraction=0.046)
    return fig, image, cells
