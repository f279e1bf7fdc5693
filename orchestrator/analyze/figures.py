"""Every figure of a sweep's summary and report, as a bare matplotlib ``Figure`` built without
pyplot (no GUI backend, no figure left in pyplot's registry); matplotlib is imported inside.
A setting's colour, line style and marker come from its first, second and third axis value, so
the legend reads as a small table; small multiples put the first axis in rows, the others in columns.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from orchestrator.analyze.layout import Panel, quantile_names
from orchestrator.analyze.records import short_name, value_text
from orchestrator.analyze.results import CompareResult, CompareRow, resolve_key

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# matplotlib's "tab10": distinct hues that stay apart in greyscale print better than a ramp.
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
          "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (8, 2)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
HATCHES = ("", "//", "..", "xx", "\\\\", "++")  # bars: a second encoding past ten colours
FIGSIZE = (7.0, 4.2)  # inches of a one-panel figure; 100 dpi → 700×420 px PNGs
PANEL_SIZE = (3.0, 2.2)  # inches per small-multiple panel; 100 dpi → 300×220 px
WRAP = 3  # panels per row when the sweep has a single axis
BAR_GROUP_WIDTH = 0.8  # share of one x slot that a group of series' bars fills
# The quantile panels, lowest percentile to highest: low ones blue, high ones red; the extremes dashed.
QUANTILE_STYLES = (("#08519c", "--"), ("#6baed6", "-"), ("#fc9272", "-"), ("#a50f15", "--"))


def setting_styles(settings: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
    """One distinct ``color``/``linestyle``/``marker`` per setting (its axis values as text, in
    axis order); where that gives two settings one look, each gets the next combination instead."""
    firsts, seconds, thirds = (list(dict.fromkeys(s[i] for s in settings if len(s) > i)) for i in range(3))
    styles = [{"color": COLORS[firsts.index(parts[0]) % len(COLORS)] if parts else COLORS[0],
               "linestyle": LINESTYLES[seconds.index(parts[1]) % len(LINESTYLES)] if len(parts) > 1 else "-",
               "marker": MARKERS[thirds.index(parts[2]) % len(MARKERS)] if len(parts) > 2 else None}
              for parts in settings]
    if len({(s["color"], str(s["linestyle"]), s["marker"]) for s in styles}) < len({tuple(s) for s in settings}):
        n_c, n_l = len(COLORS), len(LINESTYLES)
        styles = [{"color": COLORS[i % n_c], "linestyle": LINESTYLES[(i // n_c) % n_l],
                   "marker": MARKERS[(i // (n_c * n_l)) % len(MARKERS)] if i >= n_c * n_l else None}
                  for i in range(len(settings))]
    return styles


def _band(ax: "Axes", seeds: Sequence[Sequence[float]], alpha: float = 0.2, **style: Any) -> None:
    """Mean over the seeds that reached each epoch (from 1), shaded ± the sample std where at least
    two did."""
    import numpy as np

    seeds = [s for s in seeds if len(s)]
    grid = np.full((len(seeds), max(map(len, seeds), default=0)), np.nan)
    for i, s in enumerate(seeds):
        grid[i, : len(s)] = np.asarray(s, dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an epoch with no seed, or one: NaN
        mean, std = np.nanmean(grid, axis=0), np.nanstd(grid, axis=0, ddof=1)
    count = (~np.isnan(grid)).sum(axis=0)
    if count.any():
        epochs = np.arange(1, grid.shape[1] + 1)
        (line,) = ax.plot(epochs, mean, **style)
        ax.fill_between(epochs, mean - std, mean + std, where=count > 1, color=line.get_color(), alpha=alpha,
                        linewidth=0)


def metric_by_axis(result: CompareResult, metric: str | None, axis: str, *, interval: str = "std") -> "Figure":
    """Bars of the mean over seeds, one slot per value of ``axis``, one series per combination of
    the other grouping keys; error bars ± std (``interval="std"``) or the 95% Student t CI (``"ci"``).
    ``metric``: label and title (None: the result's)."""
    from matplotlib.figure import Figure

    metric = metric or result.metric
    axis = resolve_key(axis, result.group_keys, "axis (a grouping key of the comparison)")
    others = [k for k in result.group_keys if k != axis]
    rows = sorted((r for r in result.rows if r.stats.n), key=lambda r: r.order)
    xs = list(dict.fromkeys(value_text(r.group[axis]) for r in rows))  # grid order
    series: dict[tuple[str, ...], list[CompareRow]] = {}
    for r in rows:
        series.setdefault(tuple(value_text(r.group[k]) for k in others), []).append(r)
    width = BAR_GROUP_WIDTH / max(len(series), 1)
    fig = Figure(figsize=FIGSIZE, layout="constrained")
    ax = fig.add_subplot()
    lows, highs = [], []
    for i, (key, mine) in enumerate(series.items()):
        pos = [xs.index(value_text(r.group[axis])) + (i - (len(series) - 1) / 2) * width for r in mine]
        # (below, above) the mean: the std or the CI's ends; 0 below two values
        errors = [(0.0, 0.0) if r.stats.n < 2 else (r.std, r.std) if interval == "std"
                  else (r.mean - r.ci_low, r.ci_high - r.mean) for r in mine]
        lows += [r.mean - below for r, (below, _) in zip(mine, errors)]
        highs += [r.mean + above for r, (_, above) in zip(mine, errors)]
        bars = ax.bar(pos, [r.mean for r in mine], width * 0.95, yerr=list(zip(*errors)), capsize=3,
                      label=", ".join(key), color=COLORS[i % len(COLORS)],
                      hatch=HATCHES[(i // len(COLORS)) % len(HATCHES)] or None)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    if lows:
        # Zoom in on the bars' tops: rival settings often differ by less than 0.05.
        low, high = min(lows), max(highs)
        span = max(high - low, 1e-6)
        ax.set_ylim(max(0.0, low - 0.25 * span) if low >= 0 else low - 0.25 * span, high + 0.25 * span)
    ax.set_xticks(range(len(xs)), xs)
    ax.set_xlabel(short_name(axis))
    ax.set_ylabel(f"{metric} (mean ± std over seeds)" if interval == "std"
                  else f"{metric}\n(mean over seeds; bars: 95% CI, Student t)")
    counts = sorted({r.stats.n for r in rows}) or [0]
    n_text = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    by = " and ".join(short_name(k) for k in (axis, *others))
    ax.set_title(f"{metric} by {by}\n(n = {n_text} seeds per setting)", fontsize=10)
    if len(series) > 1:
        ax.legend(title=", ".join(short_name(k) for k in others), fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


def val_curves(settings: Sequence["SettingCurves"], name: str, key: str | None = None) -> "Figure":
    """Mean over seeds per epoch of ``name`` (history ``key``, default ``name``), one line per
    setting, shaded ± std."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=FIGSIZE, layout="constrained")
    ax = fig.add_subplot()
    styles = setting_styles([tuple(value_text(v) for v in s.values.values()) for s in settings])
    for setting, style in zip(settings, styles):
        n = sum(1 for s in setting.series(key or name) if len(s))
        _band(ax, setting.series(key or name), alpha=0.12, label=f"{setting.label} (n={n})", markersize=4, **style)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(name)
    ax.set_title(f"{name} by epoch (mean over seeds, band ± std)")
    if ax.lines:
        # Outside the axes: with a dozen settings an inside legend hides the curves.
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(alpha=0.3)
    return fig


@dataclass(frozen=True)
class SettingCurves:
    """One setting's per-epoch histories: one mapping per seed, seeds in grid order."""

    label: str  # records.setting_label: "gn bs8"
    values: Mapping[str, Any]  # the setting's axis -> value, in axis order (places its panel)
    seeds: tuple[str, ...]
    histories: tuple[Mapping[str, Sequence[float]], ...]  # per seed: metric key -> values from step 1

    def series(self, name: str) -> list[Sequence[float]]:
        """The seeds' sequences of one per-epoch value (missing ones empty)."""
        return [h.get(name, ()) for h in self.histories]


def panel_grid(settings: Sequence[Mapping[str, Any]], wrap: int = WRAP) -> tuple[int, int, list[tuple[int, int]]]:
    """``(rows, columns, (row, column) per setting)``: rows by the first axis, columns by the others;
    with one axis (or differing axes) the settings fill ``wrap`` columns instead."""
    keys = list(settings[0]) if settings else []
    if len(keys) > 1 and all(list(s) == keys for s in settings):
        parts = [tuple(value_text(s[k]) for k in keys) for s in settings]
        rows, cols = list(dict.fromkeys(p[0] for p in parts)), list(dict.fromkeys(p[1:] for p in parts))
        return len(rows), len(cols), [(rows.index(p[0]), cols.index(p[1:])) for p in parts]
    ncols = max(1, min(wrap, len(settings)))
    return math.ceil(len(settings) / ncols), ncols, [divmod(i, ncols) for i in range(len(settings))]


def _small_multiples(settings: Sequence[SettingCurves], per_setting: int, wrap: int):
    """A figure with ``per_setting`` panels per setting placed by :func:`panel_grid`: (figure, axes,
    each setting's panels)."""
    from matplotlib.figure import Figure

    nrows, ncols, where = panel_grid([s.values for s in settings], wrap)
    ncols *= per_setting
    fig = Figure(figsize=(PANEL_SIZE[0] * ncols + 0.8, PANEL_SIZE[1] * nrows + 0.9), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, squeeze=False)
    return fig, axes, [[axes[r][per_setting * c + j] for j in range(per_setting)] for r, c in where]


def _finish_grid(fig: "Figure", axes: Any, used: Sequence["Axes"], title: str) -> None:
    """Hide unused panels, put epochs under the lowest panel of each column, one legend, the title."""
    from matplotlib.ticker import MaxNLocator

    nrows, ncols = axes.shape
    legend: dict[str, Any] = {}
    for r in range(nrows):
        for c in range(ncols):
            ax = axes[r][c]
            if ax not in used:
                ax.set_visible(False)
                continue
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if r == nrows - 1 or axes[r + 1][c] not in used:
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


def training_curves(settings: Sequence[SettingCurves], panels: Sequence[Panel]) -> "Figure":
    """Per setting, its ``panels`` side by side: mean over seeds per epoch ± std; a panel's place
    shares one y axis across settings."""
    fig, axes, placed = _small_multiples(settings, len(panels), wrap=2)
    keys = [key for panel in panels for key, _ in panel.series]
    for setting, row in zip(settings, placed):
        n = sum(1 for h in setting.histories if any(len(h.get(key, ())) for key in keys))
        color = 0
        for ax, panel in zip(row, panels):
            for j, (key, label) in enumerate(panel.series):
                _band(ax, setting.series(key), label=label, color=COLORS[color % len(COLORS)],
                      linestyle=LINESTYLES[j % len(LINESTYLES)], linewidth=1.5)
                color += 1
            ax.set_title(f"{setting.label} (n={n}): {panel.title}", fontsize=9)
            ax.set_ylabel(panel.ylabel, fontsize=8)
    for i in range(len(panels)):
        _share_y([row[i] for row in placed])
    _finish_grid(fig, axes, [ax for row in placed for ax in row],
                 "Training curves per setting: mean over seeds by epoch, band ± 1 std")
    return fig


def quantiles(settings: Sequence[SettingCurves], names: Sequence[str] | None = None) -> "Figure":
    """One panel per setting: the percentile metrics ``names`` (default: those in the histories) by
    epoch, from the setting's first seed; shared axes."""
    found = quantile_names(names if names is not None else {n for s in settings for h in s.histories for n in h})
    fig, axes, panels = _small_multiples(settings, 1, wrap=WRAP)
    for setting, (ax,) in zip(settings, panels):
        history = setting.histories[0] if setting.histories else {}
        for i, (name, q) in enumerate(found.items()):
            color, linestyle = QUANTILE_STYLES[round(i * (len(QUANTILE_STYLES) - 1) / max(len(found) - 1, 1))]
            values = history.get(name, ())
            n = round(100 * q)  # 0.01 → "1st percentile"
            suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
            ax.plot(range(1, len(values) + 1), values, color=color, linestyle=linestyle,
                    label=f"{n}{suffix} percentile")
        ax.set_title(f"{setting.label}, seed {setting.seeds[0] if setting.seeds else '?'}", fontsize=9)
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel("feature value", fontsize=8)
    _share_y([p[0] for p in panels])
    _finish_grid(fig, axes, [p[0] for p in panels], "Feature percentiles by epoch\n(one run per setting: its "
                 "first seed)")
    return fig
