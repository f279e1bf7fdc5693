"""Sweep-level figures: a metric by one axis (mean ± std over seeds) and mean validation curves.

The functions return a :class:`matplotlib.figure.Figure`; the caller logs it (for
example ``mlflow.log_figure(fig, f"plots/{metric}_by_{axis}.png")``) and may close it.
Figures are built with ``matplotlib.figure.Figure`` directly rather than through
pyplot: no GUI backend is needed, the process-wide backend is left alone and no
figure lingers in pyplot's registry when a caller forgets to close it.
``plt.close(fig)`` on such a figure is harmless. Matplotlib (≈0.3 s to import) is
imported inside the functions so that importing this module is free.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from orchestrator.analyze.plot_style import bar_style, label_parts, setting_styles
from orchestrator.analyze.records import short_name
from orchestrator.analyze.render import STAT_FIELDS
from orchestrator.analyze.results import CompareResult, CompareRow

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIGSIZE = (7.0, 4.2)  # inches; 100 dpi → 700×420 px PNGs
BAR_GROUP_WIDTH = 0.8  # share of one x slot that a group of hue bars fills


def _plain_rows(rows: CompareResult | Sequence[CompareRow] | Sequence[Mapping[str, Any]]):
    """(group values, mean, std, order) from a CompareResult, its rows, or JSON rows."""
    if isinstance(rows, CompareResult):
        rows = rows.rows
    out = []
    for i, row in enumerate(rows):
        if isinstance(row, CompareRow):
            out.append((dict(row.group), row.mean, row.std, row.order))
        else:
            group = {k: v for k, v in row.items() if k not in STAT_FIELDS}
            mean = row.get("mean")
            std = row.get("std")
            out.append((group, math.nan if mean is None else float(mean),
                        math.nan if std is None else float(std), i))
    return out


def _ordered_unique(values: Sequence[Any]) -> list[Any]:
    """Unique values in first-seen order, or numerically sorted when all are numbers."""
    unique = list(dict.fromkeys(values))
    try:
        return sorted(unique, key=float)
    except (TypeError, ValueError):
        return unique


def metric_by_axis(
    result_for_axis: CompareResult | Sequence[CompareRow] | Sequence[Mapping[str, Any]],
    metric: str | None,
    axis: str,
) -> "Figure":
    """Bar chart of mean ± std over seeds: one slot per value of ``axis``.

    When the rows are grouped by other keys too, each combination of those keys is
    one series (colour) with its own bar in every slot. Groups without a finished run
    get no bar.

    Args:
        result_for_axis: a :class:`CompareResult` (or its rows, or the dicts of
            ``render(result, "json")``) grouped by ``axis`` and possibly other keys.
        metric: axis label and title; ``None`` takes the result's metric.
        axis: the grouping key on the x axis (dotted or short name, e.g. ``norm``).
    """
    from matplotlib.figure import Figure

    if metric is None:
        metric = result_for_axis.metric if isinstance(result_for_axis, CompareResult) else "value"
    rows = _plain_rows(result_for_axis)
    keys = list(dict.fromkeys(k for group, *_ in rows for k in group))
    if axis not in keys:
        hits = [k for k in keys if short_name(k) == axis]
        if len(hits) != 1:
            raise ValueError(f"axis {axis!r} is not a grouping key of these rows; keys: {', '.join(keys) or '(none)'}")
        axis = hits[0]
    others = [k for k in keys if k != axis]

    rows = sorted(rows, key=lambda r: r[3])
    xs = _ordered_unique([r[0].get(axis) for r in rows])
    hues = list(dict.fromkeys(tuple(r[0].get(k) for k in others) for r in rows))
    width = BAR_GROUP_WIDTH / max(len(hues), 1)

    fig = Figure(figsize=FIGSIZE)
    ax = fig.add_subplot()
    lows, highs = [], []
    for h, hue in enumerate(hues):
        pos, means, errs = [], [], []
        for group, mean, std, _ in rows:
            if tuple(group.get(k) for k in others) != hue or not math.isfinite(mean):
                continue
            offset = (h - (len(hues) - 1) / 2) * width
            pos.append(xs.index(group.get(axis)) + offset)
            means.append(mean)
            errs.append(std if math.isfinite(std) else 0.0)
            lows.append(mean - errs[-1])
            highs.append(mean + errs[-1])
        if not pos:
            continue
        label = ", ".join(str(v) for v in hue) or None  # the legend's title names the keys
        bars = ax.bar(pos, means, width * 0.95, yerr=errs, capsize=3, label=label, **bar_style(h))
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)

    ax.set_xticks(range(len(xs)), [str(x) for x in xs])
    ax.set_xlabel(short_name(axis))
    ax.set_ylabel(f"{metric} (mean ± std over seeds)")
    ax.set_title(f"{metric} by {short_name(axis)}")
    if lows:
        # Zoom in on the bars' tops: rival settings often differ by less than 0.05.
        low, high = min(lows), max(highs)
        span = max(high - low, 1e-6)
        bottom = low - 0.25 * span
        ax.set_ylim(max(0.0, bottom) if low >= 0 else bottom, high + 0.25 * span)
    if len(hues) > 1:
        ax.legend(title=", ".join(short_name(k) for k in others), fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def val_curves(curves: Mapping[str, Sequence[Sequence[float]]], metric_name: str) -> "Figure":
    """Mean over seeds per epoch, one line per setting (shaded ± std where ≥ 2 seeds).

    ``curves[setting label]`` holds one sequence per seed (see :func:`epoch_mean_std`).
    Labels are ``render.setting_label`` s: the colour follows their first word (the
    first axis), the line style the second, so no two settings look alike.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=FIGSIZE)
    ax = fig.add_subplot()
    # Colour by the label's first part (the norm), line style by the second (the batch size).
    styles = dict(zip(curves, setting_styles([label_parts(label) for label in curves])))
    for setting, seeds in curves.items():
        epochs, mean, std, count = epoch_mean_std(seeds)
        if not count.any():
            continue
        n = sum(1 for s in seeds if len(s))
        (line,) = ax.plot(epochs, mean, label=f"{setting} (n={n})", **styles[setting], markersize=4)
        ax.fill_between(epochs, mean - std, mean + std, where=count > 1,
                        color=line.get_color(), alpha=0.12, linewidth=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric_name)
    ax.set_title(f"{metric_name} by epoch (mean over seeds, band ± std)")
    if ax.lines:
        # Outside the axes: with a dozen settings an inside legend hides the curves.
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def epoch_mean_std(seeds: Sequence[Sequence[float]]):
    """Per epoch: ``(epochs, mean, std, count)`` over the seeds' sequences, as numpy arrays.

    Early stopping makes the sequences of different lengths, so epoch ``e`` (from 1)
    averages the seeds that reached it; NaN counts as missing. ``std`` is the sample std
    (NaN where fewer than two seeds count). Empty input gives empty arrays.
    """
    import numpy as np

    seeds = [s for s in seeds if len(s)]
    length = max((len(s) for s in seeds), default=0)
    grid = np.full((len(seeds), length), np.nan)
    for i, s in enumerate(seeds):
        grid[i, : len(s)] = np.asarray(s, dtype=float)
    present = ~np.isnan(grid)
    count = present.sum(axis=0)
    total = np.where(present, grid, 0.0).sum(axis=0)
    mean = np.divide(total, count, out=np.full(length, np.nan), where=count > 0)
    sq = np.where(present, (grid - mean) ** 2, 0.0).sum(axis=0)
    std = np.sqrt(np.divide(sq, count - 1, out=np.full(length, np.nan), where=count > 1))
    return np.arange(1, length + 1), mean, std, count
