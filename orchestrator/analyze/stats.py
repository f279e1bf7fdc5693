"""The statistics every table shows: a sample over seeds (:class:`Stats`) and paired differences
to a baseline (:class:`PairedStats`); scipy is imported when first needed.
"""

from __future__ import annotations

import functools
import math
import statistics
import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Iterable

CONFIDENCE = 0.95  # of the intervals: mean ± t_{(1+CONFIDENCE)/2, n-1} · s / √n
ALPHA = 0.05  # a paired difference is significant when its (adjusted) t-test's p is below this


@functools.cache
def _t_quantile(df: int) -> float:  # cached: one scipy call per df, not one per row
    from scipy import stats

    return float(stats.t.ppf((1 + CONFIDENCE) / 2, df))


@dataclass(frozen=True)
class Stats:
    """A sample of values (one per seed) and its summary; NaN where a number does not exist."""

    values: tuple[float, ...] = ()

    n = property(lambda self: len(self.values))

    @cached_property
    def mean(self) -> float:
        """NaN when empty."""
        return statistics.fmean(self.values) if self.values else math.nan

    @cached_property
    def std(self) -> float:
        """Sample standard deviation (ddof=1); NaN below two values."""
        if self.n < 2:
            return math.nan
        import numpy as np  # statistics.stdev sums exact fractions: 100 times slower

        return float(np.std(self.values, ddof=1))

    min = property(lambda self: min(self.values, default=math.nan))
    max = property(lambda self: max(self.values, default=math.nan))

    @cached_property
    def ci95(self) -> tuple[float, float]:
        """95% CI of the mean, mean ± t(0.975, n − 1)·s/√n; assumes roughly normal values.
        (NaN, NaN) below two."""
        if self.n < 2:
            return math.nan, math.nan
        half = _t_quantile(self.n - 1) * self.std / math.sqrt(self.n)
        return self.mean - half, self.mean + half

    ci_low = property(lambda self: self.ci95[0], doc="Lower end of :attr:`ci95`.")
    ci_high = property(lambda self: self.ci95[1], doc="Upper end of :attr:`ci95`.")


@dataclass(frozen=True)
class PairedStats(Stats):
    """Paired differences ``own - baseline`` (one per seed both have) as ``values``, and their t-test."""

    own: tuple[float, ...] = ()
    baseline: tuple[float, ...] = ()

    @classmethod
    def of(cls, pairs: Iterable[tuple[float, float]]) -> "PairedStats":
        """From ``(own value, baseline value)`` pairs."""
        own, baseline = tuple(zip(*pairs)) or ((), ())
        return cls(values=tuple(a - b for a, b in zip(own, baseline)), own=own, baseline=baseline)

    @cached_property
    def p_value(self) -> float:
        """Two-sided paired t-test p (``scipy.stats.ttest_rel``); assumes roughly normal differences.
        NaN below two pairs and when every difference is 0."""
        if self.n < 2:
            return math.nan
        from scipy import stats

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # identical pairs: scipy warns, returns NaN
            return float(stats.ttest_rel(self.own, self.baseline).pvalue)
