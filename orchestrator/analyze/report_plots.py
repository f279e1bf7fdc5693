"""The study report's figures: training curves and feature quantiles per setting, test accuracy.

Each function takes plain data (:class:`SettingCurves` read from the tracking store by
``study_report.py``, or a :class:`~orchestrator.analyze.results.CompareResult`) and returns a
bare :class:`matplotlib.figure.Figure` (no pyplot, as in ``summary_plots.py``).

Small multiples: one panel per setting, placed in a grid whose rows are the values of
the sweep's first axis (the norm) and whose columns are the values of the other axes
(the batch size); a one-axis sweep wraps its settings into a few columns. Panels that
show the same quantity share their axes, so a glance down a column compares settings.

Example::

    fig = training_curves(curves)          # curves: list[SettingCurves]
    fig.savefig("curves.png")
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from experiments.metric_names import QUANTILES, TRAIN_LOSS, VAL_LOSS, VAL_SCORES
from orchestrator.analyze.plot_style import COLORS, MARKERS, label_parts
from orchestrator.analyze.records import short_name, value_text
from orchestrator.analyze.render import setting_label
from orchestrator.analyze.results import CompareResult, CompareRow
from orchestrator.analyze.summary_plots import epoch_mean_std

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

NORM_KEY = "model.norm"  # the study's main axis: the x axis of the score figure when swept
PANEL_SIZE = (3.0, 2.2)  # inches per panel; 100 dpi → 300×220 px
WRAP = 3  # panels per row when the sweep has a single axis
VAL_ACC = VAL_SCORES[0]
# Per-epoch series of the training-curve panels: name -> (legend label, colour, line style).
LOSS_SERIES = {TRAIN_LOSS: ("train loss", COLORS[0], "-"), VAL_LOSS: ("val loss", COLORS[1], "--")}
ACC_SERIES = {VAL_ACC: ("val accuracy", COLORS[2], "-")}
# The quantile panels: low percentiles blue, high ones red; the extremes dashed.
QUANTILE_STYLE = dict(zip(QUANTILES, (("#08519c", "--"), ("#6baed6", "-"), ("#fc9272", "-"), ("#a50f15", "--"))))


@dataclass(frozen=True)
class SettingCurves:
    """One setting's per-epoch histories: one mapping per seed, seeds in grid order."""

    label: str  # render.setting_label: "gn bs8"
    seeds: tuple[str, ...]
    histories: tuple[Mapping[str, Sequence[float]], ...]  # per seed: per-epoch name -> values from epoch 1

    def series(self, name: str) -> list[Sequence[float]]:
        """The seeds' sequences of one per-epoch value (missing ones empty)."""
        return [h.get(name, ()) for h in self.histories]


def panel_grid(labels: Sequence[str], wrap: int = WRAP) -> tuple[int, int, list[tuple[int, int]]]:
    """``(rows, columns, (row, column) per label)``: rows by the first axis, columns by the rest.

    Labels are ``render.setting_label`` s (one word per axis). With one axis, or labels
    of unequal length, the settings fill ``wrap`` columns row by row instead.
    """
    parts = [label_parts(label) for label in labels]
    if parts and len({len(p) for p in parts}) == 1 and len(parts[0]) > 1:
        rows = list(dict.fromkeys(p[0] for p in parts))
        cols = list(dict.fromkeys(p[1:] for p in parts))
        return len(rows), len(cols), [(rows.index(p[0]), cols.index(p[1:])) for p in parts]
    ncols = max(1, min(wrap, len(labels)))
    return math.ceil(len(labels) / ncols), ncols, [divmod(i, ncols) for i in range(len(labels))]


def _band(ax: "Axes", seeds: Sequence[Sequence[float]], label: str, color: str, linestyle: str) -> None:
    """Mean over seeds by epoch, shaded ± std where at least two seeds reached the epoch."""
    epochs, mean, std, count = epoch_mean_std(seeds)
    if not count.any():
        return
    ax.plot(epochs, mean, color=color, linestyle=linestyle, linewidth=1.5, label=label)
    ax.fill_between(epochs, mean - std, mean + std, where=count > 1, color=color, alpha=0.2, linewidth=0)


def _new_grid(nrows: int, ncols: int, *, top_inches: float) -> tuple["Figure", Any]:
    from matplotlib.figure import Figure

    width, height = PANEL_SIZE[0] * ncols + 0.8, PANEL_SIZE[1] * nrows + top_inches
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(nrows, ncols, sharex=True, squeeze=False)


def _finish_grid(fig: "Figure", axes: Any, used: set[tuple[int, int]], title: str) -> None:
    """Hide unused panels, put epochs under the lowest panel of each column, one legend, the title."""
    from matplotlib.ticker import MaxNLocator

    nrows, ncols = axes.shape
    legend: dict[str, Any] = {}
    for r in range(nrows):
        for c in range(ncols):
            ax = axes[r][c]
            if (r, c) not in used:
                ax.set_visible(False)
                continue
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if r == nrows - 1 or (r + 1, c) not in used:
                ax.set_xlabel("epoch")
                ax.tick_params(labelbottom=True)
            for handle, label in zip(*ax.get_legend_handles_labels()):
                legend.setdefault(label, handle)
    if legend:
        # Below the panels: above them it would collide with the title.
        fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncols=len(legend), fontsize=8)
    fig.suptitle(title, fontsize=10)


def _share_y(axes: Sequence["Axes"]) -> None:
    """One y axis for panels that show the same quantity (called after plotting: rescale to all)."""
    for ax in axes[1:]:
        ax.sharey(axes[0])
    if axes:
        axes[0].autoscale(axis="y")  # the limits of every shared panel's data, not only the first's


def _percentile_name(q: float) -> str:
    """0.01 → ``"1st percentile"``, 0.2 → ``"20th percentile"``."""
    n = round(100 * q)
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix} percentile"


def training_curves(settings: Sequence[SettingCurves]) -> "Figure":
    """Per setting, two panels side by side: train and val loss; val accuracy.

    Mean over the setting's seeds per epoch with a ± std band; every loss panel shares
    one y axis, every accuracy panel another.
    """
    nrows, ncols, where = panel_grid([s.label for s in settings], wrap=2)
    fig, axes = _new_grid(nrows, 2 * ncols, top_inches=0.9)
    used, loss_axes, acc_axes = set(), [], []
    for setting, (r, c) in zip(settings, where):
        loss_ax, acc_ax = axes[r][2 * c], axes[r][2 * c + 1]
        used |= {(r, 2 * c), (r, 2 * c + 1)}
        loss_axes.append(loss_ax)
        acc_axes.append(acc_ax)
        for ax, series in ((loss_ax, LOSS_SERIES), (acc_ax, ACC_SERIES)):
            for name, (label, color, linestyle) in series.items():
                _band(ax, setting.series(name), label, color, linestyle)
        n = sum(1 for s in setting.series(VAL_LOSS) if len(s))
        loss_ax.set_title(f"{setting.label} (n={n}): loss", fontsize=9)
        acc_ax.set_title(f"{setting.label} (n={n}): val accuracy", fontsize=9)
        loss_ax.set_ylabel("loss (cross-entropy)", fontsize=8)
        acc_ax.set_ylabel("accuracy", fontsize=8)
    _share_y(loss_axes)
    _share_y(acc_axes)
    _finish_grid(fig, axes, used, "Training curves per setting: mean over seeds by epoch, band ± 1 std")
    return fig


def quantiles(settings: Sequence[SettingCurves]) -> "Figure":
    """One panel per setting: the four feature percentiles of the first validation example
    by epoch, from the setting's first seed (named in each panel's title). Shared axes."""
    nrows, ncols, where = panel_grid([s.label for s in settings])
    fig, axes = _new_grid(nrows, ncols, top_inches=0.9)
    used, panels = set(), []
    for setting, (r, c) in zip(settings, where):
        ax = axes[r][c]
        used.add((r, c))
        panels.append(ax)
        history = setting.histories[0] if setting.histories else {}
        for name, (color, linestyle) in QUANTILE_STYLE.items():
            values = history.get(name, ())
            ax.plot(range(1, len(values) + 1), values, color=color, linestyle=linestyle,
                    label=_percentile_name(QUANTILES[name]))
        seed = setting.seeds[0] if setting.seeds else "?"
        ax.set_title(f"{setting.label}, seed {seed}", fontsize=9)
        if c == 0:
            ax.set_ylabel("feature value", fontsize=8)
    _share_y(panels)
    _finish_grid(fig, axes, used, "Feature percentiles of the first validation example by epoch\n"
                                  "(penultimate layer; one run per setting: its first seed)")
    return fig


def score_by_setting(result: CompareResult, ylabel: str | None = None) -> "Figure":
    """Mean over seeds with 95% CI error bars (Student t): x = norm (else the first axis),
    one marker and colour per value of the other axes (the batch size)."""
    from matplotlib.figure import Figure

    keys = list(result.group_keys)
    x_key = NORM_KEY if NORM_KEY in keys else keys[0]
    others = [k for k in keys if k != x_key]
    rows = sorted((r for r in result.rows if r.n_finished), key=lambda r: r.order)
    xs = list(dict.fromkeys(value_text(r.group[x_key]) for r in rows))
    series = list(dict.fromkeys(tuple(value_text(r.group[k]) for k in others) for r in rows))
    width = 0.7 / max(len(series), 1)
    fig = Figure(figsize=(max(5.0, 0.9 * len(xs) + 2.5), 4.2), layout="constrained")
    ax = fig.add_subplot()
    for i, key in enumerate(series):
        mine = [r for r in rows if tuple(value_text(r.group[k]) for k in others) == key]
        _score_series(ax, mine, xs, x_key, (i - (len(series) - 1) / 2) * width, i, others)
    ax.set_xticks(range(len(xs)), xs)
    ax.set_xlabel(short_name(x_key))
    metric = result.metric.replace("_acc", " accuracy").replace("_", " ")
    ax.set_ylabel(ylabel or f"{metric}\n(mean over seeds; bars: 95% CI, Student t)")
    by = " and ".join(short_name(k) for k in (x_key, *others))
    counts = sorted({r.n_finished for r in rows})
    n_text = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    ax.set_title(f"{metric} by {by}\n(n = {n_text} seeds per setting)", fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    if others:
        ax.legend(title=", ".join(short_name(k) for k in others), fontsize=8)
    return fig


def _score_series(ax: "Axes", rows: Sequence[CompareRow], xs: Sequence[str], x_key: str, offset: float,
                  index: int, others: Sequence[str]) -> None:
    """One series of the score figure: points at their x slot, CI bars where n ≥ 2."""
    pos = [xs.index(value_text(r.group[x_key])) + offset for r in rows]
    means = [r.mean for r in rows]
    low = [r.mean - r.ci_low if r.n_finished > 1 else 0.0 for r in rows]
    high = [r.ci_high - r.mean if r.n_finished > 1 else 0.0 for r in rows]
    name = setting_label({k: rows[0].group[k] for k in others}) if others else short_name(x_key)
    ax.errorbar(pos, means, yerr=[low, high], fmt=MARKERS[index % len(MARKERS)], color=COLORS[index % len(COLORS)],
                capsize=3, markersize=6, linestyle="none", label=name)
