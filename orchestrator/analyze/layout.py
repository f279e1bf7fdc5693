"""What a report shows, read from the metric names the runs logged (the orchestrator knows no
entry's metrics): ``<split>_<score>`` summary metrics make the table, such step metrics and
``<split>_loss`` the training curves (``epoch/`` is a namespace), ``feat_q<NN>`` the percentiles.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from orchestrator.analyze.records import RunRecord, is_summary

SPLITS = ("train", "val", "valid", "validation", "dev", "test")  # in the table's row order
# Column titles of common scores, in the table's column order; other scores follow by name.
SCORE_TITLES = {"acc": "Accuracy", "f1_micro": "F1 micro", "f1_macro": "F1 macro"}
VALIDATION = ("val", "valid", "validation", "dev")
LOSS = "loss"
QUANTILE = re.compile(r"feat_q(\d{2})")
MAX_OTHER_PANELS = 2  # curves of other step metrics, when none is a loss or a split's score


def bare_name(key: str) -> str:
    """``"epoch/val_loss"`` → ``"val_loss"``."""
    return key.rsplit("/", 1)[-1]


def split_score(key: str) -> tuple[str, str] | None:
    """``"test_acc"`` → ``("test", "acc")``; None when the name does not start with a split."""
    split, _, score = bare_name(key).partition("_")
    return (split, score) if split in SPLITS and score else None


def is_validation(key: str) -> bool:
    """Whether the metric is a score or loss on a validation split (``epoch/val_acc``)."""
    parsed = split_score(key)
    return parsed is not None and parsed[0] in VALIDATION


def score_title(score: str) -> str:
    """``"acc"`` → ``"Accuracy"``; other scores as named."""
    return SCORE_TITLES.get(score, score)


def series_label(split: str, score: str) -> str:
    """``("val", "acc")`` → ``"val accuracy"``."""
    title = score_title(score)
    return f"{split} {title[:1].lower()}{title[1:]}"


def _score_order(score: str) -> tuple[int, str]:
    known = list(SCORE_TITLES)
    return (known.index(score) if score in known else len(known), score)


def table_layout(records: Iterable[RunRecord]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(splits, scores) of the report's table; a score counts when two splits have it
    (``train_seconds`` is no score), or, when none is shared, every score does."""
    found = {parsed for r in records for k in r.metrics
             if "/" not in k and is_summary(r, k) and (parsed := split_score(k))}
    by_score: dict[str, set[str]] = {}
    for split, score in found:
        by_score.setdefault(score, set()).add(split)
    scores = [s for s, splits in by_score.items() if len(splits) > 1] or list(by_score)
    splits = {split for s in scores for split in by_score[s]}
    return tuple(s for s in SPLITS if s in splits), tuple(sorted(scores, key=_score_order))


def held_out_metric(splits: Sequence[str], scores: Sequence[str]) -> tuple[str, str] | None:
    """(metric, label) of the last split's first score, ``("test_acc", "test accuracy")``; None
    for an empty table."""
    if not splits or not scores:
        return None
    return f"{splits[-1]}_{scores[0]}", series_label(splits[-1], scores[0])


@dataclass(frozen=True)
class Panel:
    """One panel of a setting's training curves."""

    title: str  # after the setting's label and n: "loss", "val accuracy"
    ylabel: str
    series: tuple[tuple[str, str], ...]  # (metric key, legend label), drawn in this order


def curve_panels(keys: Sequence[str]) -> tuple[Panel, ...]:
    """The training-curve panels: every split's loss, and the first score of the splits but train
    (train's when only it has one); without either, up to :data:`MAX_OTHER_PANELS` other metrics."""
    keys = [k for k in keys if k not in quantile_names(keys)]
    parsed = {k: split_score(k) or (None, bare_name(k)) for k in keys}

    def order(key: str) -> int:
        split = parsed[key][0]
        return SPLITS.index(split) if split in SPLITS else -1

    losses = sorted((k for k in keys if parsed[k][1] == LOSS), key=order)
    scored = [k for k in keys if parsed[k][0] is not None and parsed[k][1] != LOSS]
    held_out = [k for k in scored if parsed[k][0] != "train"] or scored
    panels = []
    if losses:
        panels.append(Panel(LOSS, LOSS, tuple((k, f"{parsed[k][0]} loss" if parsed[k][0] else bare_name(k))
                                              for k in losses)))
    if held_out:
        first = min((parsed[k][1] for k in held_out), key=_score_order)
        mine = sorted((k for k in held_out if parsed[k][1] == first), key=order)
        labels = tuple((k, series_label(*parsed[k])) for k in mine)
        title = score_title(first)
        panels.append(Panel(", ".join(label for _, label in labels), f"{title[:1].lower()}{title[1:]}", labels))
    if not panels:
        panels = [Panel(bare_name(k), bare_name(k), ((k, bare_name(k)),)) for k in keys[:MAX_OTHER_PANELS]]
    return tuple(panels)


def quantile_names(keys: Iterable[str]) -> dict[str, float]:
    """The percentile metrics among ``keys`` by quantile: ``feat_q01`` → 0.01."""
    found = {k: int(m.group(1)) / 100 for k in keys if (m := QUANTILE.fullmatch(bare_name(k)))}
    return dict(sorted(found.items(), key=lambda item: item[1]))
