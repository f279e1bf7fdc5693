"""``orch sweep --until-separated METRIC``: add seeds where the ranking is uncertain, and say which
settings are separated from the leader (the best mean).

Rule: at each look, every ordered pair gets a one-sided paired t-test of "i better than j" on
their common seeds; the K·(K−1) p-values are Holm-adjusted and compared with ``alpha / L`` (L:
the seed counts a setting can hold). A rival is separated when (leader, rival) is rejected; the
leader and the rivals left get ``per_round`` more seeds, up to ``max_seeds``.
Guarantee: for any true means, the chance of ever declaring a setting separated from a leader
not truly better is at most ``alpha`` (independent, roughly normal per-seed differences, finite
values; each stopped-and-resumed round can add alpha / L). Why: docs/explanation/statistics.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from orchestrator.analyze.results import CompareResult, CompareRow

ALPHA = 0.05  # default family-wise error of a separation sweep


@dataclass(frozen=True)
class Separation:
    metric: str
    direction: str = "max"  # "max" | "min": which end of METRIC is best
    max_seeds: int = 10  # seeds per setting at most, the grid's included
    per_round: int = 2  # seeds added to each setting not yet separated, per round
    alpha: float = ALPHA  # family-wise error over all looks and all pairs
    grid_seeds: int = 3  # the grid's seeds per setting: the first look's n

    looks = property(lambda self: 1 + max(0, math.ceil((self.max_seeds - self.grid_seeds) / self.per_round)),
                     doc="L: how many seed counts a setting can hold (grid_seeds, + per_round, …, max_seeds).")


def guarantee(alpha: float) -> str:
    return (f"for any true means, the chance that a sweep declares some setting separated from a leader "
            f"that is not truly better than it is at most {alpha:g} (independent, roughly normal per-seed "
            f"differences)")


@dataclass(frozen=True)
class Decision:
    """One look's verdict; arrays carry any leading (study) axes of the values."""

    leader: np.ndarray  # (...,) index of the best mean (the first on ties)
    separated: np.ndarray  # (..., K) bool: the leader is significantly better than this setting
    p_holm: np.ndarray  # (..., K) Holm-adjusted p of "leader better than j" (1 on the leader itself)
    level: float  # alpha / looks: what p_holm is compared with


def paired_p(values: np.ndarray) -> np.ndarray:
    """(..., K, K) one-sided paired t-test p of "i better than j" on common seeds of ``values``
    (..., K, n; NaN: missing), as ``scipy.stats.ttest_rel(alternative="greater")``; 1 where undefined."""
    from scipy import stats

    d = values[..., :, None, :] - values[..., None, :, :]  # (..., K, K, n)
    both = ~np.isnan(d)
    n = both.sum(-1)
    d = np.where(both, d, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = d.sum(-1) / n
        var = np.where(both, (d - mean[..., None]) ** 2, 0.0).sum(-1) / (n - 1)
        t = mean / np.sqrt(var / n)
        p = stats.t.sf(t, np.maximum(n - 1, 1))
    return np.where((n >= 2) & ~np.isnan(p), p, 1.0)


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values over the last axis, as statsmodels' ``multipletests``; NaN stays NaN."""
    m = (~np.isnan(p)).sum(-1, keepdims=True)
    order = np.argsort(np.where(np.isnan(p), np.inf, p), axis=-1)
    ranked = np.take_along_axis(p, order, -1)
    scaled = np.minimum(1.0, (m - np.arange(p.shape[-1])) * ranked)
    adjusted = np.fmax.accumulate(scaled, axis=-1)
    out = np.empty_like(p)
    np.put_along_axis(out, order, adjusted, -1)
    return np.where(np.isnan(p), np.nan, out)


def separate(values: np.ndarray, *, alpha: float, looks: int, direction: str = "max") -> Decision:
    """Which settings are separated from the leader (the module's rule). ``values``: (..., K, n), one
    column per seed, NaN where missing; leading axes are independent studies."""
    v = np.asarray(values, dtype=float)
    v = v if direction == "max" else -v
    k = v.shape[-2]
    counts = (~np.isnan(v)).sum(-1)
    with np.errstate(invalid="ignore"):
        means = np.where(counts > 0, np.nansum(v, -1) / np.maximum(counts, 1), -np.inf)
    leader = np.argmax(means, axis=-1)
    p = paired_p(v)
    p[..., np.arange(k), np.arange(k)] = np.nan  # no hypothesis "i better than i"
    adjusted = holm(p.reshape(*p.shape[:-2], k * k)).reshape(p.shape)
    p_leader = np.take_along_axis(adjusted, leader[..., None, None], -2)[..., 0, :]  # (..., K)
    p_leader = np.where(np.isnan(p_leader), 1.0, p_leader)
    level = alpha / looks
    return Decision(leader=leader, separated=p_leader <= level, p_holm=p_leader, level=level)


@dataclass(frozen=True)
class Verdict:
    """A look at a sweep's comparison: the leader, the rows separated from it, and the rest."""

    leader: CompareRow | None
    separated: tuple[tuple[CompareRow, float], ...]  # (row, Holm-adjusted p)
    undecided: tuple[tuple[CompareRow, float], ...]  # rivals with a value that are not separated
    settings: int  # K, the comparison's rows
    level: float


def decide(result: CompareResult, sep: Separation) -> Verdict:
    """:func:`separate` on a sweep's comparison (rows × seeds as values)."""
    rows = list(result.rows)
    column = {s: i for i, s in enumerate(dict.fromkeys(s for r in rows for s in r.seeds))}
    values = np.full((len(rows), len(column)), np.nan)
    for i, row in enumerate(rows):
        for sample in row.samples:
            values[i, column[sample.seed]] = sample.value
    if sum(1 for r in rows if r.n_finished) < 2:
        return Verdict(None, (), (), len(rows), sep.alpha / sep.looks)
    d = separate(values, alpha=sep.alpha, looks=sep.looks, direction=sep.direction)
    lead = int(d.leader)
    rivals = [(i, r) for i, r in enumerate(rows) if i != lead and r.n_finished]
    return Verdict(rows[lead], tuple((r, float(d.p_holm[i])) for i, r in rivals if d.separated[i]),
                   tuple((r, float(d.p_holm[i])) for i, r in rivals if not d.separated[i]), len(rows), d.level)


def verdict_json(verdict: Verdict, sep: Separation) -> dict[str, Any]:
    """What the sweep's parent keeps as ``separation.json`` (read back by ``--confirm``)."""
    def entry(row: CompareRow, p: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"setting": dict(row.group), "mean": row.mean, "n": row.n_finished}
        return out if p is None else {**out, "p_holm": p}

    return {"metric": sep.metric, "direction": sep.direction, "alpha": sep.alpha, "looks": sep.looks,
            "settings": verdict.settings, "level": verdict.level,
            "leader": None if verdict.leader is None else entry(verdict.leader),
            "separated": [entry(r, p) for r, p in verdict.separated],
            "not_separated": [entry(r, p) for r, p in verdict.undecided]}


def summary_lines(verdict: Verdict, sep: Separation) -> list[str]:
    """The end-of-sweep lines: what was declared, at which alpha, and the guarantee."""
    head = f"until separated on {sep.metric} ({'higher' if sep.direction == 'max' else 'lower'} is better):"
    if verdict.leader is None:
        return [f"{head} fewer than two settings have a value; nothing declared"]

    def listed(pairs) -> str:
        return ", ".join(f"{r.label} (p_holm {p:.3g}, n={r.n_finished})" for r, p in pairs) or "none"

    return [f"{head} leader {verdict.leader.label} (n={verdict.leader.n_finished})",
            f"  separated from the leader: {listed(verdict.separated)}",
            f"  not separated: {listed(verdict.undecided)}",
            f"  rule: one-sided paired t-tests on common seeds, Holm over all "
            f"{verdict.settings * (verdict.settings - 1)} ordered pairs, each look at alpha/L = "
            f"{sep.alpha:g}/{sep.looks} = {verdict.level:.4g}",
            f"  guarantee: {guarantee(sep.alpha)}",
            "  the leader's interval is optimistic after adaptive seeds; for an unbiased table run "
            "`orch sweep GRID --confirm N`"]
