"""Comparison results and the report's table as text: table (with its notes), csv, markdown,
json, latex (the report only). The numbers are ``results.py``'s; tabulate is imported inside.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any, Iterable, Sequence

from orchestrator.analyze.layout import score_title
from orchestrator.analyze.records import RunRecord, short_name, short_names, value_text
from orchestrator.analyze.results import CompareError, CompareResult, SettingStats, SplitStats, report_stats
from orchestrator.analyze.stats import ALPHA, CONFIDENCE, Stats
from orchestrator.store.schema import ExpectedPoint

FORMATS = ("table", "csv", "markdown", "json")
REPORT_FORMATS = ("markdown", "csv", "latex", "table", "json")
SMALL_N = 5  # below this many seeds (or pairs) the notes warn that the t interval/test is weak
MISSING = "–"  # shown for a value that does not exist (no run, or std of one seed)
# A JSON/CSV comparison row's statistics (CompareRow attributes), after rank and grouping keys.
ROW_STATS = ("mean", "std", "n_finished", "n_expected", "n_diverged", "n_failed", "min", "max", "ci_low", "ci_high")
DELTA_STATS = ("delta_mean", "delta_std", "n_pairs",  # only with a baseline
               "delta_ci_low", "delta_ci_high", "p_value", "significant")
SAMPLE_FIELDS = ("seeds", "values")  # per finished run (and stand-in), in grid order
POOLED_FIELD = "pooled_axes"  # the grid axes that each row pools (the same on every row)
EXTRA_SEEDS = "extra_seeds"  # only when some row got seeds from --until-separated
EXTRA_MARK = "†"  # after n in the table: the row got seeds from --until-separated
CI_TITLE = f"{CONFIDENCE:.0%} CI"
LOST_TITLE = "div/fail"  # run keys that diverged / failed otherwise (records.Outcome)


def _num(x: float, digits: int = 4, sign: str = "") -> str:
    return MISSING if math.isnan(x) else f"{x:{sign}.{digits}f}"


def _mean_std(stats: Stats, digits: int = 4, sign: str = "") -> str:
    if stats.n == 0:
        return MISSING
    mean = _num(stats.mean, digits, sign)
    return mean if stats.n == 1 else f"{mean} ± {_num(stats.std, digits)}"


def _ci_text(stats: Stats, sign: str = "") -> str:
    low, high = stats.ci95
    return MISSING if math.isnan(low) else f"[{_num(low, 4, sign)}, {_num(high, 4, sign)}]"


def _p_text(p: float) -> str:
    return MISSING if math.isnan(p) else "<0.001" if p < 0.001 else f"{p:.3f}"


def _json_value(x: Any) -> Any:
    if isinstance(x, tuple):
        return [_json_value(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


def _csv_cell(x: Any) -> str:
    """The JSON value flattened: null → empty, true/false, lists joined with ``;``."""
    if isinstance(x, list):
        return ";".join(value_text(v) for v in x)
    return "" if x is None else str(x).lower() if isinstance(x, bool) else str(x)


def render(result: CompareResult, fmt: str = "table") -> str:
    """Render a comparison as ``table`` (with its notes), ``csv``, ``markdown`` or ``json``."""
    if fmt == "json":
        return json.dumps(machine_rows(result), indent=2)
    if fmt == "csv":
        rows = machine_rows(result)
        fields = list(rows[0]) if rows else ["rank", *result.group_keys]
        return table_text(fields, [[_csv_cell(r[k]) for k in fields] for r in rows], "csv")
    if fmt not in FORMATS:
        raise CompareError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    headers, body = _display_table(result)
    right = [i == 0 or i > len(result.group_keys) for i in range(len(headers))]  # rank and numbers
    if fmt == "markdown":
        return table_text(headers, body, fmt)
    title = f"{result.metric} ({'higher' if result.direction == 'max' else 'lower'} is better)"
    notes = "".join(f"{note}\n" for note in compare_notes(result))  # one line each, for grep
    return f"{title}\n{table_text(headers, body, fmt, right=right)}{notes}"


def _display_table(result: CompareResult) -> tuple[list[str], list[list[str]]]:
    adjusted = _adjusted_field(result)
    headers = ["rank", *short_names(result.group_keys), f"{result.metric} mean ± std", "n", LOST_TITLE, CI_TITLE]
    if result.baseline_key is not None:
        headers += [f"Δ vs {short_name(result.baseline_key)}={result.baseline_value}", "pairs", f"Δ {CI_TITLE}",
                    "p (paired t)", *([f"p ({result.correction.capitalize()})"] if adjusted else []), "*"]
    body = []
    for r in result.rows:
        cells = [MISSING if r.rank is None else str(r.rank), *(value_text(r.group[k]) for k in result.group_keys),
                 _mean_std(r.stats), f"{r.n_finished}/{r.n_expected}{EXTRA_MARK if r.extra_seeds else ''}",
                 f"{r.n_diverged}/{r.n_failed}", _ci_text(r.stats)]
        if result.baseline_key is not None:
            cells += [_mean_std(r.delta, sign="+"), str(r.n_pairs), _ci_text(r.delta, sign="+"), _p_text(r.p_value),
                      *([_p_text(r.p_adjusted)] if adjusted else []), "*" if r.significant else ""]
        body.append(cells)
    return headers, body


def _adjusted_field(result: CompareResult) -> str | None:
    """``p_holm`` / ``p_bonferroni``; None without a baseline or correction."""
    if result.baseline_key is None or result.correction == "none":
        return None
    return f"p_{result.correction}"


def machine_rows(result: CompareResult) -> list[dict[str, Any]]:
    """Flat, JSON-ready rows (NaN → None)."""
    fields = list(ROW_STATS)
    if result.baseline_key is not None:
        fields += DELTA_STATS
    adjusted = _adjusted_field(result)
    if adjusted:
        fields.insert(fields.index("p_value") + 1, adjusted)
    fields += SAMPLE_FIELDS
    extra = any(r.extra_seeds for r in result.rows)
    rows = []
    for row in result.rows:
        out: dict[str, Any] = {"rank": row.rank, **{k: _json_value(row.group[k]) for k in result.group_keys}}
        out.update((f, _json_value(row.p_adjusted if f == adjusted else getattr(row, f))) for f in fields)
        out[POOLED_FIELD] = list(result.pooled_axes)
        rows.append({**out, EXTRA_SEEDS: row.extra_seeds} if extra else out)
    return rows


def compare_notes(result: CompareResult) -> list[str]:
    """One line each: how the interval, test and correction were computed; lost runs; pooled axes;
    a warning at small n."""
    notes = [f"{CI_TITLE}: Student t over seeds, mean ± t(0.975, n-1)·s/√n; {MISSING} below 2 seeds."]
    counts = [r.stats.n for r in result.rows]
    what = "seeds: the t interval assumes roughly normal per-seed values"
    if result.baseline_key is not None:
        notes.append(f"Δ: per-seed difference to {result.baseline}, over the seeds both have; "
                     f"p: two-sided paired t-test (scipy.stats.ttest_rel).")
        notes.append(_correction_note(result))
        counts = [r.n_pairs for r in result.rows]
        what = "pairs: the t-test assumes roughly normal per-seed differences"
    notes += _lost_note(result)
    if result.pooled_axes:
        pooled = ", ".join(result.pooled_axes)
        notes.append(f"pooled over {pooled} (not a grouping key): each row's std, {CI_TITLE} and paired test "
                     f"treat its runs at every {pooled} value as more seeds, so differences between "
                     f"those values count as noise.")
    small = sorted({n for n in counts if 2 <= n < SMALL_N})
    if small:
        note = f"n = {'/'.join(map(str, small))} {what} and is weak at this n"
        if _adjusted_field(result):
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
    if result.correction == "none":
        return (f"* = p < {ALPHA}, not corrected for {tests}: if no setting differs from the baseline, "
                f"the chance of at least one false * grows with m (up to m × {ALPHA:.0%}).")
    name = result.correction.capitalize()  # Holm, Bonferroni
    how = "Holm's step-down adjustment" if result.correction == "holm" else "Bonferroni's adjustment (p × m)"
    return (f"p ({name}): {how} over {tests} (statsmodels multipletests); * = p ({name}) < {ALPHA}: "
            f"if no setting differs from the baseline, the chance of any * is at most {ALPHA:.0%} "
            f"(family-wise, under any dependence between the tests).")


def _lost_note(result: CompareResult) -> list[str]:
    diverged, failed = sum(r.n_diverged for r in result.rows), sum(r.n_failed for r in result.rows)
    if not diverged + failed:
        return []
    one = diverged + failed == 1
    runs = f"{diverged + failed} run{'' if one else 's'} ({diverged} diverged, {failed} failed)"
    what = ("diverged: training stopped on a non-finite loss, or the finished value is not finite; "
            "failed: ended FAILED for another reason")
    if result.failed_as == "worst" and not math.isnan(result.worst):
        lowest = "lowest" if result.direction == "max" else "highest"
        return [f"{LOST_TITLE}: {runs} count{'s' if one else ''} as the {lowest} {result.metric} among the "
                f"table's finished runs, {result.worst:.4f} (--failed-as worst); {what}."]
    return [f"{LOST_TITLE}: {runs} {'has' if one else 'have'} no value and {'is' if one else 'are'} left out "
            f"of the means, which flatters their settings (--failed-as worst counts them as the table's "
            f"worst value); {what}."]


def report(records: Iterable[RunRecord], expected: Sequence[ExpectedPoint], *, fmt: str = "markdown") -> str:
    """The report's table ``Setting | set | <score>... | n``: one row per split per setting, cells the
    mean ± sample std over seeds (3 decimals), ``n`` the seeds counted (``2–3`` where they differ)."""
    return render_report(report_stats(records, expected), fmt)


def render_report(settings: Sequence[SettingStats], fmt: str = "markdown") -> str:
    """Lay out :func:`results.report_stats` as ``markdown``, ``csv``, ``latex``, ``table`` or ``json``."""
    if fmt not in REPORT_FORMATS:
        raise CompareError(f"unknown report format {fmt!r}; choose one of {', '.join(REPORT_FORMATS)}")
    if fmt == "json":
        return json.dumps([_report_json(s.label, split) for s in settings for split in s.splits], indent=2)
    first = settings[0].splits if settings else ()
    scores = list(first[0].scores) if first else []
    headers = ["Setting", "set", *(score_title(s) for s in scores), "n"]
    body = []
    for s in settings:
        for i, split in enumerate(s.splits):
            counts = [split.scores[score].n for score in scores]
            n = str(min(counts)) if min(counts) == max(counts) else f"{min(counts)}–{max(counts)}"
            body.append([s.label if i == 0 or fmt == "csv" else "", split.split,
                         *(_mean_std(split.scores[score], 3) for score in scores), n])
    return table_text(headers, body, fmt, right=[i >= 2 for i in range(len(headers))], group=len(first))


def _report_json(label: str, split: SplitStats) -> dict[str, Any]:
    row: dict[str, Any] = {"setting": label, "set": split.split}
    for score in split.scores:
        stats = split.scores[score]
        row.update({score: _json_value(stats.mean), f"{score}_std": _json_value(stats.std), f"{score}_n": stats.n})
    return row


def table_text(headers: Sequence[str], body: Sequence[Sequence[str]], fmt: str, *,
            right: Sequence[bool] = (), group: int = 0) -> str:
    """String cells in ``fmt``; ``right``: the number columns, ``group``: a rule after every that
    many rows."""
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([headers, *body])
        return buf.getvalue()
    if fmt == "latex":
        return _latex_tabular(headers, body, right, group)
    from tabulate import SEPARATING_LINE, tabulate

    if fmt == "markdown":
        # disable_numparse keeps "0.790" as written instead of re-formatting it to 0.79.
        return tabulate(body, headers=list(headers), tablefmt="github", disable_numparse=True) + "\n"
    rows: list[Any] = []
    for i, cells in enumerate(body):
        if group and i and i % group == 0:
            rows.append(SEPARATING_LINE)
        rows.append(cells)
    return tabulate(rows, headers=list(headers), tablefmt="simple_outline", disable_numparse=True,
                    colalign=["right" if r else "left" for r in right] or None) + "\n"


# LaTeX's special characters, and the report's two non-ASCII ones, as LaTeX source.
_LATEX = str.maketrans({
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "–": "--",
})


def latex_escape(text: str) -> str:
    r"""``"bn_torch bs8"`` → ``"bn\_torch bs8"``; ``±`` → ``$\pm$``; ``–`` → ``--``."""
    return text.translate(_LATEX)


def _latex_tabular(headers: Sequence[str], body: Sequence[Sequence[str]], right: Sequence[bool], group: int) -> str:
    r"""A booktabs ``tabular``, a little space after every ``group`` rows."""
    spec = "".join("r" if r else "l" for r in right)
    lines = [r"% needs \usepackage{booktabs}; cells: mean $\pm$ sample std over n seeds",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(latex_escape(h) for h in headers) + r" \\", r"\midrule"]
    for n, cells in enumerate(body):
        if n and n % group == 0:
            lines.append(r"\addlinespace")
        lines.append(" & ".join(latex_escape(c) for c in cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"
