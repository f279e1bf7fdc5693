"""How many points a grid gives, counted from its sections before anything is expanded.

A grid's points are its settings (the product of the axes, minus what ``exclude``
removes, plus the ``include`` entries) times its seeds. :func:`check_size` refuses a grid
whose product of axes (plus include entries) times seeds exceeds ``max_points``, before
any point or config is built, so that ``--dry-run`` on a grid of 10**6 points answers in
a blink instead of filling memory. The limit is checked on the count before ``exclude``
(exclude entries can only shrink it): that bounds the expansion work itself, which walks
the whole product. The message also gives the count after ``exclude`` when it is cheap to
compute (a dozen exclude entries or fewer). This module imports nothing heavy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from orchestrator.grid.reader import GridReader, GridSections

__all__ = ["DEFAULT_MAX_POINTS", "GridSize", "check_size", "grid_size"]

DEFAULT_MAX_POINTS = 10_000  # about 2 s of validation here (build + check of every setting)
MAX_EXACT_EXCLUDES = 12  # inclusion-exclusion visits up to 2**12 subsets of the exclude entries


@dataclass(frozen=True)
class GridSize:
    """A grid's point count, factor by factor."""

    axes: tuple[tuple[str, int], ...]  # (axis, number of values) in file order
    product_used: bool  # False when the grid has no axes and include entries are its settings
    excluded: int | None  # points that exclude removes; None: too many entries to count exactly
    n_excludes: int
    included: int
    seeds: int

    @property
    def bound(self) -> int:
        """Points before exclude: what the limit is checked on."""
        product = math.prod(n for _, n in self.axes) if self.product_used else 0
        return (product + self.included) * self.seeds

    @property
    def points(self) -> int | None:
        """Points after exclude, or None when not counted."""
        if self.excluded is None:
            return None
        return self.bound - self.excluded * self.seeds

    def formula(self) -> str:
        """``"(7 model.norm × 2 data.batch_size − 1 excluded + 1 included) × 3 seeds = 42 points"``."""
        terms = " × ".join(f"{n:,} {key}" for key, n in self.axes) if self.product_used else ""
        if self.product_used and not self.axes:
            terms = "1 base setting"
        if self.excluded:
            terms += f" − {self.excluded:,} excluded"
        elif self.excluded is None:
            terms += f" − what {self.n_excludes:,} exclude entries remove"
        if self.included:
            terms += f" + {self.included:,} included" if terms else f"{self.included:,} included"
        if "−" in terms or "+" in terms:
            terms = f"({terms})"
        seeds = f"{self.seeds:,} seed{'s' if self.seeds != 1 else ''}"
        total = self.points if self.points is not None else self.bound
        return f"{terms} × {seeds} = {'up to ' if self.points is None else ''}{total:,} points"


def grid_size(sections: GridSections) -> GridSize:
    """Count the points of ``sections`` (after ``--set``) without expanding them."""
    axes = {key: len(values) for key, (values, _) in sections.axes.items()}
    values = {key: set(axis) for key, (axis, _) in sections.axes.items()}
    # An entry whose value --set took out of its axis matches no point any more.
    excludes = [{k: v for k, (v, _) in entry.items()} for entry in sections.excludes
                if all(v in values[k] for k, (v, _) in entry.items())]
    product_used = bool(axes) or not sections.includes
    excluded = excluded_count(axes, excludes) if product_used else 0
    return GridSize(axes=tuple(axes.items()), product_used=product_used, excluded=excluded,
                    n_excludes=len(sections.excludes), included=len(sections.includes), seeds=len(sections.seeds))


def excluded_count(axes: Mapping[str, int], excludes: Sequence[Mapping[str, Any]]) -> int | None:
    """How many points of the product of ``axes`` (axis → number of values) match at least
    one exclude entry (axis → a value of it), by inclusion-exclusion over the entries; None
    for more than :data:`MAX_EXACT_EXCLUDES` entries.

    Example:
        >>> excluded_count({"a": 3, "b": 2}, [{"a": 1}, {"b": 8}, {"a": 1, "b": 8}])
        4
    """
    if len(excludes) > MAX_EXACT_EXCLUDES:
        return None
    total = 0

    def add(start: int, merged: dict[str, Any], size: int) -> None:
        nonlocal total
        for i in range(start, len(excludes)):
            entry = excludes[i]
            if any(k in merged and merged[k] != v for k, v in entry.items()):
                continue  # these entries contradict: no point matches both, nor any superset
            both = {**merged, **entry}
            sign = 1 if size % 2 == 0 else -1  # + for odd subsets (size counts those before this one)
            total += sign * math.prod(n for k, n in axes.items() if k not in both)
            add(i + 1, both, size + 1)

    add(0, {}, 0)
    return total


def check_size(g: GridReader, sections: GridSections, max_points: int | None) -> GridSize:
    """Refuse a grid of more than ``max_points`` points before exclude (None: no limit).

    Raises:
        ConfigError: the count, how it arises and the fix (``--max-points N``, or fewer
            values or seeds).
    """
    size = grid_size(sections)
    if max_points is not None and size.bound > max_points:
        after = ""
        if size.points is not None and size.points != size.bound:
            after = f" ({size.bound:,} before exclude, which the limit counts)"
        g.fail(None, f"the grid expands to {size.formula()}{after}, over the limit of {max_points:,} points; "
                     f"give fewer values or seeds, or raise the limit with --max-points {size.bound}")
    return size
