"""How the sweep figures tell settings apart: colour by one axis, line style by the next.

Matplotlib's default cycle has ten colours, so a 7-norm × 2-batch sweep drew
``bn_torch bs8`` and ``gn bs8`` alike. Here a setting's colour comes from its value on
the first axis, its line style from the second and its marker from the third, so the
legend reads as a small table (colour = norm, dashes = batch size). Where that still
gives two settings one look (more values than colours), every setting gets the next
colour × line-style combination in turn instead. Nothing here imports matplotlib.

Example::

    styles = setting_styles([("bn", "bs8"), ("bn", "bs128"), ("gn", "bs8")])
    ax.plot(x, y, label="gn bs8", **styles[2])
"""

from __future__ import annotations

from typing import Any, Sequence

# matplotlib's "tab10": distinct hues that stay apart in greyscale print better than a ramp.
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
          "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (8, 2)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
HATCHES = ("", "//", "..", "xx", "\\\\", "++")  # bars: a second encoding past ten colours


def setting_styles(settings: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
    """One distinct ``color``/``linestyle``/``marker`` (keyword arguments of ``plot``) per setting.

    Args:
        settings: each setting's values on the sweep's axes, as text, in axis order
            (``("gn", "bs8")``); a setting with fewer values is drawn solid, unmarked.
    """
    firsts, seconds, thirds = (_unique(s[i] for s in settings if len(s) > i) for i in range(3))
    styles = []
    for parts in settings:
        styles.append({
            "color": COLORS[firsts.index(parts[0]) % len(COLORS)] if parts else COLORS[0],
            "linestyle": LINESTYLES[seconds.index(parts[1]) % len(LINESTYLES)] if len(parts) > 1 else "-",
            "marker": MARKERS[thirds.index(parts[2]) % len(MARKERS)] if len(parts) > 2 else None,
        })
    looks = {(s["color"], str(s["linestyle"]), s["marker"]) for s in styles}
    if len(looks) < len({tuple(s) for s in settings}):
        styles = [_style_number(i) for i in range(len(settings))]
    return styles


def label_parts(label: str) -> tuple[str, ...]:
    """``"gn bs8"`` → ``("gn", "bs8")``: the axis values of a ``render.setting_label``."""
    return tuple(label.split())


def _style_number(i: int) -> dict[str, Any]:
    """The ``i``-th of colour × line style × marker, colours varying fastest."""
    n_c, n_l = len(COLORS), len(LINESTYLES)
    marker = MARKERS[(i // (n_c * n_l)) % len(MARKERS)] if i >= n_c * n_l else None
    return {"color": COLORS[i % n_c], "linestyle": LINESTYLES[(i // n_c) % n_l], "marker": marker}


def bar_style(i: int) -> dict[str, Any]:
    """The ``i``-th bar series: a colour, and a hatch once the colours run out."""
    return {"color": COLORS[i % len(COLORS)], "hatch": HATCHES[(i // len(COLORS)) % len(HATCHES)] or None}


def _unique(values) -> list[str]:
    return list(dict.fromkeys(values))
