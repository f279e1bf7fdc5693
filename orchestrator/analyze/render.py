"""Comparison results and the study's report as text: table (rich), csv, markdown, json, latex.

The numbers come from ``results.py``; this module only lays them out. ``table`` is
plain text (no colour codes), ``markdown`` is a GitHub table, ``csv`` and ``json`` are
for machines (NaN becomes an empty cell / ``null``), ``latex`` (the report only) is a
booktabs ``tabular`` to paste into a paper. rich and tabulate are imported inside the
functions that use them.

A comparison's table carries its footnotes (how the interval and the test were
computed, the correction for the number of tests, diverged and failed runs, pooled axes,
and a warning at small n) as a caption; for the other formats they come from
:func:`compare_notes`, so that the output stays a table a program can read.

Example::

    print(render(compare(records, expected, "val_f1_macro"), "markdown"))
    print(report(records, expected, fmt="latex"))
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from typing import Any, Iterable, Mapping, Sequence

from experiments.metric_names import SCORES, SPLITS
from orchestrator.analyze.records import RunRecord, short_name, short_names, value_text
from orchestrator.analyze.results import (
    ALPHA,
    CONFIDENCE,
    CORRECTIONS,
    CompareError,
    CompareResult,
    CompareRow,
    PairedStats,
    SettingStats,
    Stats,
    report_stats,
)
from orchestrator.store.schema import ExpectedPoint

FORMATS = ("table", "csv", "markdown", "json")
REPORT_FORMATS = ("markdown", "csv", "latex", "table", "json")
REPORT_TITLES = dict(zip(SCORES, ("Accuracy", "F1 micro", "F1 macro")))  # score -> column title
SMALL_N = 5  # below this many seeds (or pairs) the notes warn that the t interval/test is weak
BATCH_SIZE_KEY = "data.batch_size"
MISSING = "–"  # shown for a value that does not exist (no run, or std of one seed)
TABLE_WIDTH = 180  # characters of a rich table (a baseline comparison of a 2-axis grid needs ~175)
_SEED_SUFFIX = re.compile(r"-s\d+$")
# The statistics of a JSON/CSV comparison row, in column order after rank and grouping keys;
# each is an attribute of CompareRow.
ROW_STATS = ("mean", "std", "n_finished", "n_expected", "n_diverged", "n_failed", "min", "max", "ci_low", "ci_high")
DELTA_STATS = ("delta_mean", "delta_std", "n_pairs",  # only with a baseline
               "delta_ci_low", "delta_ci_high", "p_value", "significant")
CI_TITLE = f"{CONFIDENCE:.0%} CI"
P_TITLE = "p (paired t)"
LOST_TITLE = "div/fail"  # run keys that diverged / failed otherwise (records.Outcome)
# The adjusted p of a JSON/CSV row is named after its correction (p_holm, p_bonferroni), after p_value.
CORRECTION_NAMES = {"holm": "Holm", "bonferroni": "Bonferroni"}
SAMPLE_FIELDS = ("seeds", "values")  # per finished run (and stand-in), in grid order
POOLED_FIELD = "pooled_axes"  # the grid axes that each row pools (the same on every row)
EXTRA_SEEDS = "extra_seeds"  # only when some row got seeds from --until-separated
EXTRA_MARK = "†"  # after n in the table: the row got seeds from --until-separated
# Keys of a JSON/CSV row that are not grouping values (used to read rows back).
STAT_FIELDS = frozenset({"rank", *ROW_STATS, *DELTA_STATS, *SAMPLE_FIELDS, POOLED_FIELD, EXTRA_SEEDS,
                         *(f"p_{c}" for c, method in CORRECTIONS.items() if method)})


# --------------------------------------------------------------------------- cells


def _num(x: float, digits: int) -> str:
    return MISSING if x is None or math.isnan(x) else f"{x:.{digits}f}"


def _mean_pm_std(stats: Stats, digits: int = 4) -> str:
    if math.isnan(stats.mean):
        return MISSING
    return f"{stats.mean:.{digits}f} ± {_num(stats.std, digits)}"


def _delta_text(delta: Stats, digits: int = 4) -> str:
    if delta.n == 0:
        return MISSING
    return f"{delta.mean:+.{digits}f} ± {_num(delta.std, digits)}"


def _ci_text(stats: Stats, digits: int = 4) -> str:
    low, high = stats.ci95
    if math.isnan(low):
        return MISSING
    sign = "+" if isinstance(stats, PairedStats) else ""  # a difference shows its sign
    return f"[{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


def _p_text(p: float) -> str:
    if math.isnan(p):
        return MISSING
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _report_cell(stats: Stats, digits: int = 3) -> str:
    """Mean over seeds, ``± std`` from two seeds on, ``–`` without any."""
    if stats.n == 0:
        return MISSING
    if stats.n == 1:
        return f"{stats.mean:.{digits}f}"
    return f"{stats.mean:.{digits}f} ± {stats.std:.{digits}f}"


def _json_value(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def setting_label(values: Mapping[str, Any], fallback: str = "") -> str:
    """Readable setting name: ``{"model.norm": "gn", "data.batch_size": 8}`` → ``"gn bs8"``.

    Batch sizes read ``bs<N>``; other numbers and booleans read ``<short key>=<value>``
    so that they stay unambiguous; plain strings are shown as they are.
    """
    parts = []
    for key, value in values.items():
        text = value_text(value)
        if key == BATCH_SIZE_KEY:
            parts.append(f"bs{text}")
        elif _looks_numeric(value):
            parts.append(f"{short_name(key)}={text}")
        else:
            parts.append(text)
    return " ".join(parts) or _SEED_SUFFIX.sub("", fallback) or "(base)"


def _looks_numeric(value: Any) -> bool:
    if isinstance(value, (bool, int, float)):
        return True
    if isinstance(value, str):
        if value in ("True", "False"):
            return True
        try:
            float(value)
            return True
        except ValueError:
            return False
    return False


# --------------------------------------------------------------------------- compare


def render(result: CompareResult, fmt: str = "table", *, width: int = TABLE_WIDTH) -> str:
    """Render a comparison as ``table`` (rich, plain text), ``csv``, ``markdown`` or ``json``."""
    if fmt == "table":
        headers, body = _display_table(result)
        n_keys = len(result.group_keys)
        right = [i == 0 or i > n_keys for i in range(len(headers))]  # rank and numbers
        title = f"{result.metric} ({'higher' if result.direction == 'max' else 'lower'} is better)"
        return _rich_text(headers, body, right=right, title=title, width=width,
                          caption="\n".join(compare_notes(result)))
    if fmt == "markdown":
        return github_table(*_display_table(result))
    if fmt == "json":
        return json.dumps([row_to_dict(r, result) for r in result.rows], indent=2)
    if fmt == "csv":
        return _compare_csv(result)
    raise CompareError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _display_table(result: CompareResult) -> tuple[list[str], list[list[str]]]:
    """Headers and string cells shared by the table and markdown formats."""
    has_baseline = result.baseline_key is not None
    adjusted = has_baseline and CORRECTIONS[result.correction] is not None
    headers = ["rank", *short_names(result.group_keys), f"{result.metric} mean ± std", "n", LOST_TITLE, CI_TITLE]
    if has_baseline:
        headers += [f"Δ vs {short_name(result.baseline_key)}={result.baseline_value}", "pairs",
                    f"Δ {CI_TITLE}", P_TITLE, *([_adjusted_title(result)] if adjusted else []), "*"]
    body = []
    for r in result.rows:
        cells = [MISSING if r.rank is None else str(r.rank)]
        cells += [value_text(r.group[k]) for k in result.group_keys]
        cells += [_mean_pm_std(r.stats), f"{r.n_finished}/{r.n_expected}{EXTRA_MARK if r.extra_seeds else ''}",
                  f"{r.n_diverged}/{r.n_failed}",
                  _ci_text(r.stats)]
        if has_baseline:
            cells += [_delta_text(r.delta), str(r.n_pairs), _ci_text(r.delta), _p_text(r.p_value),
                      *([_p_text(r.p_adjusted)] if adjusted else []), "*" if r.significant else ""]
        body.append(cells)
    return headers, body


def _adjusted_title(result: CompareResult) -> str:
    return f"p ({CORRECTION_NAMES[result.correction]})"


def compare_notes(result: CompareResult) -> list[str]:
    """One line each: how the interval (and the test, and its correction) were computed;
    diverged and failed runs; pooled axes; a warning at small n."""
    notes = [f"{CI_TITLE}: Student t over seeds, mean ± t(0.975, n-1)·s/√n; {MISSING} below 2 seeds."]
    counts = [r.stats.n for r in result.rows]
    what = "seeds: the t interval assumes roughly normal per-seed values"
    if result.baseline_key is not None:
        notes.append(f"Δ: per-seed difference to {result.baseline}, over the seeds both have; "
                     f"p: two-sided paired t-test (scipy.stats.ttest_rel).")
        notes.append(_correction_note(result))
        counts = [r.n_pairs for r in result.rows]
        what = "pairs: the t-test assumes roughly normal per-seed differences"
    lost = _lost_note(result)
    if lost:
        notes.append(lost)
    if result.pooled_axes:
        pooled = ", ".join(result.pooled_axes)
        notes.append(f"pooled over {pooled} (not a grouping key): each row's std, {CI_TITLE} and paired test "
                     f"treat its runs at every {pooled} value as more seeds, so differences between "
                     f"those values count as noise.")
    small = sorted({n for n in counts if 2 <= n < SMALL_N})
    if small:
        note = f"n = {'/'.join(map(str, small))} {what} and is weak at this n"
        if result.baseline_key is not None and CORRECTIONS[result.correction] is not None:
            note += (f"; with {small[0]} pairs a paired t-test has {small[0] - 1} degree"
                     f"{'s' if small[0] > 2 else ''} of freedom, so only large effects reach * after correction")
        notes.append(note + ".")
    if any(r.extra_seeds for r in result.rows):
        notes.append(f"{EXTRA_MARK} ({EXTRA_SEEDS}): seeds added by --until-separated; intervals after adaptive seed "
                     "allocation are optimistic for the leader; confirm with `orch sweep GRID --confirm N`.")
    return notes


def _correction_note(result: CompareResult) -> str:
    m = result.n_tests
    tests = f"the table's m = {m} paired test{'s' if m != 1 else ''}"
    if CORRECTIONS[result.correction] is None:
        return (f"* = p < {ALPHA}, not corrected for {tests}: if no setting differs from the baseline, "
                f"the chance of at least one false * grows with m (up to m × {ALPHA:.0%}).")
    name = CORRECTION_NAMES[result.correction]
    how = "Holm's step-down adjustment" if result.correction == "holm" else "Bonferroni's adjustment (p × m)"
    return (f"p ({name}): {how} over {tests} (statsmodels multipletests); * = p ({name}) < {ALPHA}: "
            f"if no setting differs from the baseline, the chance of any * is at most {ALPHA:.0%} "
            f"(family-wise, under any dependence between the tests).")


def _lost_note(result: CompareResult) -> str | None:
    diverged, failed = sum(r.n_diverged for r in result.rows), sum(r.n_failed for r in result.rows)
    if not diverged + failed:
        return None
    one = diverged + failed == 1
    runs = f"{diverged + failed} run{'' if one else 's'} ({diverged} diverged, {failed} failed)"
    what = ("diverged: training stopped on a non-finite loss, or the finished value is not finite; "
            "failed: ended FAILED for another reason")
    if result.failed_as == "worst" and not math.isnan(result.worst):
        lowest = "lowest" if result.direction == "max" else "highest"
        return (f"{LOST_TITLE}: {runs} count{'s' if one else ''} as the {lowest} {result.metric} among the "
                f"table's finished runs, {result.worst:.4f} (--failed-as worst); {what}.")
    return (f"{LOST_TITLE}: {runs} {'has' if one else 'have'} no value and {'is' if one else 'are'} left out "
            f"of the means, which flatters their settings (--failed-as worst counts them as the table's "
            f"worst value); {what}.")


def _adjusted_field(result: CompareResult) -> str | None:
    """``p_holm`` / ``p_bonferroni``: the adjusted p's JSON/CSV name; None without a baseline or correction."""
    if result.baseline_key is None or CORRECTIONS[result.correction] is None:
        return None
    return f"p_{result.correction}"


def _stat_fields(result: CompareResult) -> tuple[str, ...]:
    deltas = list(DELTA_STATS) if result.baseline_key is not None else []
    adjusted = _adjusted_field(result)
    if adjusted:
        deltas.insert(deltas.index("p_value") + 1, adjusted)
    extra = (EXTRA_SEEDS,) if any(r.extra_seeds for r in result.rows) else ()
    return (*ROW_STATS, *deltas, *SAMPLE_FIELDS, POOLED_FIELD, *extra)


def row_to_dict(row: CompareRow, result: CompareResult) -> dict[str, Any]:
    """A flat, JSON-ready row: grouping keys, statistics, per-seed values (NaN → None), and
    the pooled axes (the same on every row)."""
    out: dict[str, Any] = {"rank": row.rank}
    out.update({k: _json_value(row.group[k]) for k in result.group_keys})
    adjusted = _adjusted_field(result)
    for name in _stat_fields(result):
        if name == POOLED_FIELD:
            value = result.pooled_axes
        else:
            value = row.p_adjusted if name == adjusted else getattr(row, name)
        out[name] = [_json_value(v) for v in value] if isinstance(value, tuple) else _json_value(value)
    return out


def _compare_csv(result: CompareResult) -> str:
    fields = ["rank", *result.group_keys, *_stat_fields(result)]
    body = []
    for row in result.rows:
        d = row_to_dict(row, result)
        d["seeds"] = ";".join(value_text(s) for s in d["seeds"])
        d["values"] = ";".join(repr(v) for v in d["values"])
        d[POOLED_FIELD] = ";".join(d[POOLED_FIELD])
        if d.get("significant") is not None:
            d["significant"] = str(d["significant"]).lower()  # as in the JSON: true / false
        if d.get(EXTRA_SEEDS) is not None:
            d[EXTRA_SEEDS] = str(d[EXTRA_SEEDS]).lower()
        body.append(["" if d[k] is None else d[k] for k in fields])
    return _csv_text(fields, body)


# --------------------------------------------------------------------------- report


def report(
    records: Iterable[RunRecord],
    expected: Sequence[ExpectedPoint] | None,
    *,
    fmt: str = "markdown",
) -> str:
    """The study's table: ``Setting | set | Accuracy | F1 micro | F1 macro | n``.

    Three rows per setting (train, val, test), settings in grid order, the label on the
    first row only (markdown, latex and table; csv repeats it on every row so that the
    file stays machine-readable). Cells are means over seeds to 3 decimals, with
    ``± std`` (sample std) when more than one seed finished; ``–`` when none did. ``n``
    is the number of seeds in the row's cells (``2–3`` where a diverged run's value is
    missing from some of them).
    """
    return render_report(report_stats(records, expected), fmt)


def render_report(settings: Sequence[SettingStats], fmt: str = "markdown") -> str:
    """Lay out :func:`results.report_stats` as ``markdown``, ``csv``, ``latex``, ``table`` or ``json``."""
    if fmt not in REPORT_FORMATS:
        raise CompareError(f"unknown report format {fmt!r}; choose one of {', '.join(REPORT_FORMATS)}")
    if fmt == "json":
        return json.dumps(_report_json(settings), indent=2)
    headers = ["Setting", "set", *(REPORT_TITLES[s] for s in SCORES), "n"]
    body = _report_body(settings, repeat_label=fmt == "csv")
    if fmt == "markdown":
        return github_table(headers, body)
    if fmt == "csv":
        return _csv_text(headers, body)
    if fmt == "latex":
        return _latex_tabular(headers, body, group=len(SPLITS))
    right = [i >= 2 for i in range(len(headers))]  # the scores and n
    return _rich_text(headers, body, right=right, section=len(SPLITS))


def _report_body(settings: Sequence[SettingStats], *, repeat_label: bool) -> list[list[str]]:
    body = []
    for s in settings:
        label = setting_label(s.values, s.name)
        for i, split in enumerate(s.splits):
            cells = [label if i == 0 or repeat_label else "", split.split]
            cells += [_report_cell(split.scores[score]) for score in SCORES]
            body.append(cells + [_count_text(split.scores[score].n for score in SCORES)])
    return body


def _count_text(counts: Iterable[int]) -> str:
    low, high = min(counts := list(counts)), max(counts)
    return str(low) if low == high else f"{low}–{high}"


def _report_json(settings: Sequence[SettingStats]) -> list[dict[str, Any]]:
    rows = []
    for s in settings:
        label = setting_label(s.values, s.name)
        for split in s.splits:
            row: dict[str, Any] = {"setting": label, "set": split.split}
            for score in SCORES:
                stats = split.scores[score]
                row.update({score: _json_value(stats.mean), f"{score}_std": _json_value(stats.std),
                            f"{score}_n": stats.n})
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- formats


def _rich_text(
    headers: Sequence[str],
    body: Sequence[Sequence[str]],
    *,
    right: Sequence[bool],
    title: str | None = None,
    caption: str | None = None,
    section: int = 0,
    width: int = TABLE_WIDTH,
) -> str:
    """A rich table as plain text; ``section``: a rule after every that many rows."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, caption=caption or None, caption_justify="left")
    for header, is_right in zip(headers, right):
        table.add_column(header, justify="right" if is_right else "left", no_wrap=True)
    for n, cells in enumerate(body):
        table.add_row(*cells, end_section=bool(section) and n % section == section - 1)
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)
    console.print(table)
    return console.file.getvalue()


def github_table(headers: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table of string cells (also the runs' descriptions in MLflow, ``run_notes``)."""
    from tabulate import tabulate

    # disable_numparse keeps "0.790" as written instead of re-formatting it to 0.79.
    return tabulate(body, headers=list(headers), tablefmt="github", disable_numparse=True) + "\n"


# LaTeX's special characters, and the report's two non-ASCII ones, as LaTeX source.
_LATEX = str.maketrans({
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "–": "--",
})


def latex_escape(text: str) -> str:
    r"""``"bn_torch bs8"`` → ``"bn\_torch bs8"``; ``±`` → ``$\pm$``; ``–`` → ``--``."""
    return text.translate(_LATEX)


def _latex_tabular(headers: Sequence[str], body: Sequence[Sequence[str]], *, group: int) -> str:
    r"""A booktabs ``tabular`` (``\usepackage{booktabs}``): rules at top, under the header and at
    the bottom, a little space after every ``group`` rows; text columns left, numbers right."""
    spec = "".join("l" if i < 2 else "r" for i in range(len(headers)))
    lines = [r"% needs \usepackage{booktabs}; cells: mean $\pm$ sample std over n seeds",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(latex_escape(h) for h in headers) + r" \\", r"\midrule"]
    for n, cells in enumerate(body):
        if n and n % group == 0:
            lines.append(r"\addlinespace")
        lines.append(" & ".join(latex_escape(c) for c in cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _csv_text(headers: Sequence[str], body: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows(body)
    return buf.getvalue()
