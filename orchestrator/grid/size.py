"""How many points a grid gives, counted before anything is expanded: ``--dry-run`` on a grid of
10**6 points answers at once instead of filling memory. The count is taken before ``exclude``
(which can only shrink it): that bounds the expansion itself, which walks the whole product.
"""

from __future__ import annotations

import math

from orchestrator.grid.reader import GridReader, GridSections

__all__ = ["DEFAULT_MAX_POINTS", "check_size"]

DEFAULT_MAX_POINTS = 10_000  # about 2 s of validation here (build + check of every setting)


def check_size(g: GridReader, sections: GridSections, max_points: int | None) -> None:
    """Refuse a grid of more than ``max_points`` points (None: no limit), saying how they arise:
    ``"(7 optim.lr × 2 train.max_epochs + 1 included) × 3 seeds = 45 points"``."""
    axes = {key: len(values) for key, (values, _) in sections.axes.items()}
    product_used = bool(axes) or not sections.includes  # without axes, include entries are the settings
    included, seeds = len(sections.includes), len(sections.seeds)
    bound = ((math.prod(axes.values()) if product_used else 0) + included) * seeds
    if max_points is None or bound <= max_points:
        return
    terms = " × ".join(f"{n:,} {key}" for key, n in axes.items()) or ("1 base setting" if product_used else "")
    if included:
        terms = f"({terms} + {included:,} included)" if terms else f"{included:,} included"
    count = f"{terms} × {seeds:,} seed{'s' if seeds != 1 else ''} = {bound:,} points"
    g.fail(None, f"the grid expands to {count}{' before exclude' if sections.excludes else ''}, over the limit of "
                 f"{max_points:,} points; give fewer values or seeds, or raise the limit with --max-points {bound}")
