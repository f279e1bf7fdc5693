"""compare.py (records.py, results.py, render.py) and the summary figures on synthetic records, checked against numpy."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math

import numpy as np
import pytest
import scipy.stats
from statsmodels.stats.multitest import multipletests

from conftest import run_record
from experiments.metric_names import SCORES, SPLIT_SCORES, SPLITS
from orchestrator.analyze.figures import SettingCurves, metric_by_axis, setting_styles, val_curves
from orchestrator.analyze.layout import Panel, curve_panels, quantile_names, table_layout
from orchestrator.analyze.records import RunRecord, match_units, setting_label, short_names, summary_rows
from orchestrator.analyze.render import FORMATS, compare_notes, latex_escape, render, render_report, report
from orchestrator.analyze.results import CompareError, CompareResult, compare, report_stats
from orchestrator.analyze.stats import PairedStats, Stats
from orchestrator.analyze.sweep_summary import curve_metric, sweep_metric
from orchestrator.store.schema import ExpectedPoint, Kind, Tag, TrialState

pytestmark = pytest.mark.usefixtures("frozen_heap")  # compare() runs statsmodels' Holm: see conftest

NORMS = ("bn_torch", "bn", "gn")
BATCHES = (8, 128)
SEEDS = (0, 1, 2)


def setting_of(norm: str, bs: int) -> str:
    return f"model.norm={norm},data.batch_size={bs}"


def expected_grid(norms=NORMS, batches=BATCHES, seeds=SEEDS) -> list[ExpectedPoint]:
    return [
        ExpectedPoint(
            name=f"{n}-bs{b}-s{s}",
            run_key=f"key-{n}-{b}-{s}",
            point={"model.norm": n, "data.batch_size": b, "seed": s},
            setting=setting_of(n, b),
        )
        for n in norms
        for b in batches
        for s in seeds
    ]


def random_metrics(rng: np.random.Generator) -> dict[str, float]:
    m = {name: float(rng.uniform(0.5, 0.95)) for name in SPLIT_SCORES}
    m["best_epoch"] = float(rng.integers(1, 30))
    m["epoch/val_acc"] = 0.1  # latest per-epoch value: never a summary metric
    return m


@pytest.fixture
def sweep():
    """3 norms × 2 batch sizes × 3 seeds, all finished, plus the value table."""
    rng = np.random.default_rng(1234)
    expected = expected_grid()
    records = [run_record(ep, random_metrics(rng), start=100 + i) for i, ep in enumerate(expected)]
    return expected, records


def values_for(records, metric, **point):
    """Independent reference: the metric of each finished record matching ``point``, by seed."""
    out = {}
    for r in records:
        if r.status != "FINISHED" or r.tags.get(Tag.TRIAL_STATE) == TrialState.PRUNED:
            continue
        if all(r.params[k] == str(v) for k, v in point.items()):
            out[r.params["seed"]] = r.metrics[metric]
    return out


def row_for(result: CompareResult, **group):
    hits = [r for r in result.rows if all(str(r.group[k]) == str(v) for k, v in group.items())]
    assert len(hits) == 1, hits
    return hits[0]


# --------------------------------------------------------------------------- compare


def test_means_stds_counts_match_numpy(sweep):
    expected, records = sweep
    result = compare(records, expected, "val_f1_macro")
    assert result.group_keys == ("model.norm", "data.batch_size")
    assert len(result.rows) == len(NORMS) * len(BATCHES)
    for norm in NORMS:
        for bs in BATCHES:
            vals = np.array(list(values_for(records, "val_f1_macro", **{"model.norm": norm, "data.batch_size": bs}).values()))
            row = row_for(result, **{"model.norm": norm, "data.batch_size": bs})
            assert row.mean == pytest.approx(vals.mean())
            assert row.std == pytest.approx(vals.std(ddof=1))
            assert row.min == pytest.approx(vals.min()) and row.max == pytest.approx(vals.max())
            assert (row.n_finished, row.n_expected) == (3, 3)
            assert sorted(row.values) == pytest.approx(sorted(vals))
            assert sorted(row.seeds) == ["0", "1", "2"]
    means = [r.mean for r in result.rows]
    assert means == sorted(means, reverse=True)
    assert [r.rank for r in result.rows] == list(range(1, 7))


def test_failed_pruned_and_reruns(sweep):
    expected, records = sweep
    gn8 = [ep for ep in expected if ep.setting == setting_of("gn", 8)]
    records = list(records)
    # A failed later attempt of seed 0 does not replace its finished run.
    records.append(run_record(gn8[0], {"val_f1_macro": 0.0}, status="FAILED", start=10_000))
    # A pruned trial with the same run key as seed 1 is never a result.
    records.append(run_record(gn8[1], {"val_f1_macro": 1.0}, start=10_001,
                          tags={Tag.KIND: Kind.TRIAL, Tag.TRIAL_STATE: TrialState.PRUNED}))
    # A rerun of seed 2 (same run key, later start) replaces the earlier result ...
    records.append(run_record(gn8[2], {"val_f1_macro": 0.123}, start=10_002))
    # ... and an even older finished duplicate does not.
    records.append(run_record(gn8[2], {"val_f1_macro": 0.999}, start=1))
    # A run from outside the grid is ignored.
    stranger = ExpectedPoint("ln-bs8-s0", "key-ln", {"model.norm": "ln", "data.batch_size": 8, "seed": 0},
                             setting_of("ln", 8))
    records.append(run_record(stranger, {"val_f1_macro": 0.5}, start=5))

    result = compare(records, expected, "val_f1_macro")
    row = row_for(result, **{"model.norm": "gn", "data.batch_size": 8})
    original = {r.params["seed"]: r.metrics["val_f1_macro"] for r in sweep[1] if r.name in {e.name for e in gn8}}
    want = np.array([original["0"], original["1"], 0.123])
    assert row.n_finished == 3 and row.n_expected == 3
    assert row.n_failed == 0 and row.n_diverged == 0  # the failed rerun does not undo a result
    assert sorted(row.values) == pytest.approx(sorted(want))
    assert row.mean == pytest.approx(want.mean())
    assert row.std == pytest.approx(want.std(ddof=1))
    assert all(r.group["model.norm"] != "ln" for r in result.rows)


def test_missing_and_failed_points_count_as_expected_only(sweep):
    expected, records = sweep
    dropped = {"gn-bs128-s2", "gn-bs128-s1"}
    records = [r for r in records if r.name not in dropped]
    failed_ep = next(ep for ep in expected if ep.name == "gn-bs128-s1")
    records.append(run_record(failed_ep, {}, status="FAILED", start=50_000))
    # A whole setting that never ran sorts last with no rank.
    records = [r for r in records if not r.name.startswith("bn-bs8-")]
    result = compare(records, expected, "val_f1_macro")
    row = row_for(result, **{"model.norm": "gn", "data.batch_size": 128})
    assert (row.n_finished, row.n_expected) == (1, 3)
    assert math.isnan(row.std)
    last = result.rows[-1]
    assert last.group == {"model.norm": "bn", "data.batch_size": 8}
    assert (last.n_finished, last.n_expected, last.rank) == (0, 3, None)
    assert math.isnan(last.mean)


def test_direction_min_and_top(sweep):
    expected, records = sweep
    asc = compare(records, expected, "val_f1_macro", direction="min")
    means = [r.mean for r in asc.rows]
    assert means == sorted(means)
    desc = compare(records, expected, "val_f1_macro", top=2)
    assert len(desc.rows) == 2
    assert desc.rows[0].mean == pytest.approx(max(means))
    with pytest.raises(ValueError, match="direction"):
        compare(records, expected, "val_f1_macro", direction="up")


def test_group_by_subset_pools_other_axes(sweep):
    expected, records = sweep
    for key in ("model.norm", "norm"):  # dotted or short name
        result = compare(records, expected, "test_acc", group_by=[key])
        assert result.group_keys == ("model.norm",)
        assert len(result.rows) == len(NORMS)
        for norm in NORMS:
            vals = np.array([r.metrics["test_acc"] for r in records if r.params["model.norm"] == norm])
            row = row_for(result, **{"model.norm": norm})
            assert (row.n_finished, row.n_expected) == (6, 6)
            assert row.mean == pytest.approx(vals.mean())
            assert row.std == pytest.approx(vals.std(ddof=1))
    # A param that is not an axis groups by the records' values.
    by_data = compare(records, expected, "test_acc", group_by=["data.name"])
    assert [(r.group["data.name"], r.n_finished, r.n_expected) for r in by_data.rows] == [("cifar10", 18, 18)]
    with pytest.raises(ValueError, match="model.norm"):
        compare(records, expected, "test_acc", group_by=["nonsense"])


def test_baseline_paired_deltas(sweep):
    expected, records = sweep
    result = compare(records, expected, "val_f1_macro", baseline="model.norm=bn_torch")
    assert result.baseline == "model.norm=bn_torch"
    for norm in NORMS:
        for bs in BATCHES:
            row = row_for(result, **{"model.norm": norm, "data.batch_size": bs})
            mine = values_for(records, "val_f1_macro", **{"model.norm": norm, "data.batch_size": bs})
            base = values_for(records, "val_f1_macro", **{"model.norm": "bn_torch", "data.batch_size": bs})
            diffs = np.array([mine[s] - base[s] for s in sorted(mine)])
            assert row.n_pairs == 3
            assert row.delta_mean == pytest.approx(diffs.mean())
            assert row.delta_std == pytest.approx(diffs.std(ddof=1))
            if norm == "bn_torch":
                assert row.delta_mean == 0.0 and row.delta_std == 0.0

    # Batch size as the baseline key, pairs matched on norm and seed; one seed missing.
    records = [r for r in records if r.name != "gn-bs128-s1"]
    result = compare(records, expected, "val_f1_macro", baseline="batch_size=128")
    row = row_for(result, **{"model.norm": "gn", "data.batch_size": 8})
    mine = values_for(records, "val_f1_macro", **{"model.norm": "gn", "data.batch_size": 8})
    base = values_for(records, "val_f1_macro", **{"model.norm": "gn", "data.batch_size": 128})
    diffs = np.array([mine[s] - base[s] for s in sorted(base)])
    assert row.n_pairs == 2
    assert row.delta_mean == pytest.approx(diffs.mean())
    assert row.delta_std == pytest.approx(diffs.std(ddof=1))


def test_baseline_on_pooled_rows_pairs_on_the_pooled_axis(sweep):
    expected, records = sweep
    result = compare(records, expected, "val_acc", group_by=["model.norm"], baseline="model.norm=bn")
    row = row_for(result, **{"model.norm": "gn"})
    diffs = []
    for bs in BATCHES:
        mine = values_for(records, "val_acc", **{"model.norm": "gn", "data.batch_size": bs})
        base = values_for(records, "val_acc", **{"model.norm": "bn", "data.batch_size": bs})
        diffs += [mine[s] - base[s] for s in mine]
    assert row.n_pairs == 6
    assert row.delta_mean == pytest.approx(np.mean(diffs))
    assert row.delta_std == pytest.approx(np.std(diffs, ddof=1))


def test_errors_list_what_exists(sweep):
    expected, records = sweep
    with pytest.raises(ValueError) as err:
        compare(records, expected, "val_f1")
    msg = str(err.value)
    assert "val_f1" in msg and "val_f1_macro" in msg and "test_acc" in msg
    assert msg.index("val_f1_macro") < msg.index("epoch/val_acc")  # summary metrics first
    with pytest.raises(ValueError) as err:
        compare(records, expected, "val_acc", baseline="model.norm=batchnorm")
    assert all(v in str(err.value) for v in NORMS)
    with pytest.raises(ValueError, match="key=value"):
        compare(records, expected, "val_acc", baseline="bn_torch")
    with pytest.raises(ValueError, match="grouping key"):
        compare(records, expected, "val_acc", group_by=["data.batch_size"], baseline="model.norm=bn")


def test_no_finished_runs_gives_empty_rows_not_an_error():
    expected = expected_grid(norms=("gn",), batches=(8,))
    result = compare([], expected, "val_acc")
    assert [(r.n_finished, r.n_expected) for r in result.rows] == [(0, 3)]
    assert "0/3" in render(result, "table")


# --------------------------------------------------------------------------- intervals and tests

# val_f1_macro per seed: bn beats the baseline by about 0.05 on every seed (a steady
# difference), gn by +0.03, -0.04, +0.01, -0.02 (noise around zero).
BASE_VALUES = (0.80, 0.82, 0.79, 0.81)
KNOWN_VALUES = {
    "bn_torch": BASE_VALUES,
    "bn": tuple(b + d for b, d in zip(BASE_VALUES, (0.05, 0.06, 0.045, 0.055))),
    "gn": tuple(b + d for b, d in zip(BASE_VALUES, (0.03, -0.04, 0.01, -0.02))),
}


@pytest.fixture
def known_sweep():
    """Three norms × four seeds with the values above (batch size 8 only)."""
    expected = expected_grid(norms=tuple(KNOWN_VALUES), batches=(8,), seeds=(0, 1, 2, 3))
    records = [run_record(ep, {"val_f1_macro": KNOWN_VALUES[ep.point["model.norm"]][ep.point["seed"]]}, start=i)
               for i, ep in enumerate(expected)]
    return expected, records


def t_interval(values) -> tuple[float, float]:
    """Independent reference: mean ± t_{0.975, n-1} · s / √n."""
    vals = np.asarray(values, dtype=float)
    half = scipy.stats.t.ppf(0.975, len(vals) - 1) * vals.std(ddof=1) / math.sqrt(len(vals))
    return vals.mean() - half, vals.mean() + half


def test_ci_and_paired_t_test_equal_scipy(known_sweep):
    expected, records = known_sweep
    result = compare(records, expected, "val_f1_macro", baseline="model.norm=bn_torch", correction="none")
    base = np.array(BASE_VALUES)
    for norm, values in KNOWN_VALUES.items():
        row = row_for(result, **{"model.norm": norm})
        assert (row.ci_low, row.ci_high) == pytest.approx(t_interval(values), abs=1e-12)
        own = np.array(values)
        assert (row.delta_ci_low, row.delta_ci_high) == pytest.approx(t_interval(own - base), abs=1e-12)
        if norm == "bn_torch":  # the baseline against itself: no test
            assert math.isnan(row.p_value) and row.significant is None
            continue
        p = scipy.stats.ttest_rel(own, base).pvalue
        assert row.p_value == pytest.approx(p, rel=1e-12)
        assert row.significant is bool(p < 0.05)
    assert row_for(result, **{"model.norm": "bn"}).significant is True
    assert row_for(result, **{"model.norm": "gn"}).significant is False


def test_paired_test_uses_only_the_seeds_both_have(known_sweep):
    expected, records = known_sweep
    records = [r for r in records if r.name not in ("gn-bs8-s3", "bn_torch-bs8-s0")]
    result = compare(records, expected, "val_f1_macro", baseline="model.norm=bn_torch")
    gn = row_for(result, **{"model.norm": "gn"})
    own, base = np.array(KNOWN_VALUES["gn"][1:3]), np.array(BASE_VALUES[1:3])  # seeds 1 and 2
    assert gn.n_pairs == 2 and gn.n_finished == 3
    assert gn.p_value == pytest.approx(scipy.stats.ttest_rel(own, base).pvalue, rel=1e-12)
    assert (gn.ci_low, gn.ci_high) == pytest.approx(t_interval(KNOWN_VALUES["gn"][:3]), abs=1e-12)


def test_intervals_and_tests_undefined_below_two():
    assert all(math.isnan(x) for x in Stats((0.5,)).ci95 + Stats().ci95)
    assert math.isnan(PairedStats.of([(0.9, 0.8)]).p_value)
    assert PairedStats.of([]).n == 0 and math.isnan(PairedStats.of([]).p_value)
    paired = PairedStats.of([(0.9, 0.8), (0.7, 0.75), (0.6, 0.5)])
    assert paired.values == pytest.approx((0.1, -0.05, 0.1))
    assert paired.p_value == pytest.approx(scipy.stats.ttest_rel([0.9, 0.7, 0.6], [0.8, 0.75, 0.5]).pvalue)
    expected = expected_grid(norms=("bn", "gn"), batches=(8,), seeds=(0,))
    records = [run_record(ep, {"val_acc": 0.5 + i / 10}, start=i) for i, ep in enumerate(expected)]
    rows = json.loads(render(compare(records, expected, "val_acc", baseline="norm=bn"), "json"))
    assert all(r["ci_low"] is None and r["p_value"] is None and r["significant"] is None for r in rows)


def test_every_format_shows_intervals_p_and_the_mark(known_sweep):
    expected, records = known_sweep
    result = compare(records, expected, "val_f1_macro", baseline="model.norm=bn_torch")
    bn, gn = row_for(result, **{"model.norm": "bn"}), row_for(result, **{"model.norm": "gn"})

    rows = {r["model.norm"]: r for r in json.loads(render(result, "json"))}
    assert rows["bn"]["significant"] is True and rows["gn"]["significant"] is False
    assert rows["bn_torch"]["significant"] is None and rows["bn_torch"]["p_value"] is None
    assert (rows["gn"]["ci_low"], rows["gn"]["ci_high"]) == pytest.approx((gn.ci_low, gn.ci_high))
    assert rows["gn"]["p_value"] == pytest.approx(gn.p_value)
    assert (rows["bn"]["delta_ci_low"], rows["bn"]["delta_ci_high"]) == pytest.approx((bn.delta_ci_low,
                                                                                       bn.delta_ci_high))

    by_norm = {r["model.norm"]: r for r in csv.DictReader(io.StringIO(render(result, "csv")))}
    assert (by_norm["bn"]["significant"], by_norm["gn"]["significant"], by_norm["bn_torch"]["significant"]) \
        == ("true", "false", "")
    assert float(by_norm["gn"]["p_value"]) == pytest.approx(gn.p_value)
    assert float(by_norm["bn"]["ci_high"]) == pytest.approx(bn.ci_high)

    header, *body = md_rows_with_header(render(result, "markdown"))
    assert header[:5] == ["rank", "norm", "batch_size", "val_f1_macro mean ± std", "n"]  # old columns first
    assert header[5:] == ["div/fail", "95% CI", "Δ vs norm=bn_torch", "pairs", "Δ 95% CI", "p (paired t)",
                          "p (Holm)", "*"]
    md = {cells[1]: dict(zip(header, cells)) for cells in body}
    assert md["bn"]["*"] == "*" and md["gn"]["*"] == "" and md["bn_torch"]["*"] == ""
    assert md["gn"]["p (paired t)"] == f"{gn.p_value:.3f}"
    assert md["gn"]["95% CI"] == f"[{gn.ci_low:.4f}, {gn.ci_high:.4f}]"
    assert md["bn_torch"]["p (paired t)"] == "–"

    table = render(result, "table")
    assert "95% CI" in table and "p (paired t)" in table and f"{gn.p_value:.3f}" in table
    flat = " ".join(table.split())
    assert "paired t-test (scipy.stats.ttest_rel)" in flat and "weak at this n" in flat


def md_rows_with_header(text: str) -> list[list[str]]:
    lines = text.strip().splitlines()
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[:1] + lines[2:]]


# --------------------------------------------------------------------------- corrected tests

# Two rows whose paired tests are significant alone (p = 0.034 and 0.042) but not after Holm
# over the two of them (both 0.068): the star must follow the adjusted p.
BORDERLINE_DELTAS = {"bn": (0.02, 0.03, 0.005, 0.025), "gn": (0.02, 0.035, 0.005, 0.03)}


@pytest.fixture
def borderline_sweep():
    values = {"bn_torch": BASE_VALUES,
              **{n: tuple(b + d for b, d in zip(BASE_VALUES, ds)) for n, ds in BORDERLINE_DELTAS.items()}}
    expected = expected_grid(norms=tuple(values), batches=(8,), seeds=(0, 1, 2, 3))
    records = [run_record(ep, {"val_f1_macro": values[ep.point["model.norm"]][ep.point["seed"]]}, start=i)
               for i, ep in enumerate(expected)]
    return expected, records


def test_holm_adjusted_p_equals_statsmodels_and_decides_the_star(borderline_sweep):
    expected, records = borderline_sweep
    result = compare(records, expected, "val_f1_macro", baseline="model.norm=bn_torch")
    tested = [r for r in result.rows if r.group["model.norm"] != "bn_torch"]
    raw = [r.p_value for r in tested]
    assert all(0.025 < p < 0.05 for p in raw)  # each significant alone
    holm = multipletests(raw, alpha=0.05, method="holm")[1]
    assert [r.p_adjusted for r in tested] == pytest.approx(list(holm), abs=1e-12)
    assert all(p > 0.05 for p in holm) and all(r.significant is False for r in tested)
    assert result.correction == "holm" and result.n_tests == 2

    rows = {r["model.norm"]: r for r in json.loads(render(result, "json"))}
    for row in tested:
        got = rows[row.group["model.norm"]]
        assert got["p_value"] == pytest.approx(row.p_value, abs=1e-12)
        assert got["p_holm"] == pytest.approx(row.p_adjusted, abs=1e-12) and got["significant"] is False
    assert rows["bn_torch"]["p_holm"] is None and rows["bn_torch"]["significant"] is None
    by_norm = {r["model.norm"]: r for r in csv.DictReader(io.StringIO(render(result, "csv")))}
    assert float(by_norm["gn"]["p_holm"]) == pytest.approx(row_for(result, **{"model.norm": "gn"}).p_adjusted)
    assert by_norm["gn"]["significant"] == "false" and by_norm["bn_torch"]["p_holm"] == ""
    header, *body = md_rows_with_header(render(result, "markdown"))
    md = {cells[1]: dict(zip(header, cells)) for cells in body}
    assert md["bn"]["p (Holm)"] == f"{holm[0]:.3f}" and md["bn"]["*"] == "" and md["gn"]["*"] == ""
    flat = " ".join(render(result, "table").split())
    assert "p (Holm)" in flat and "m = 2 paired tests" in flat and "family-wise" in flat

    # --top keeps every test in the family.
    top = compare(records, expected, "val_f1_macro", baseline="model.norm=bn_torch", top=1)
    assert top.n_tests == 2 and top.rows[0].p_adjusted == pytest.approx(max(holm), abs=1e-12)

    # Bonferroni: p × m, capped at 1; without a correction the raw p decides and no adjusted field exists.
    bonf = compare(records, expected, "val_f1_macro", baseline="model.norm=bn_torch", correction="bonferroni")
    want = multipletests(raw, alpha=0.05, method="bonferroni")[1]
    assert [row_for(bonf, **r.group).p_adjusted for r in tested] == pytest.approx(list(want), abs=1e-12)
    assert {"p_bonferroni", "p_value"} <= set(json.loads(render(bonf, "json"))[0])
    none = compare(records, expected, "val_f1_macro", baseline="model.norm=bn_torch", correction="none")
    assert all(row_for(none, **r.group).significant is True for r in tested)
    assert all(math.isnan(r.p_adjusted) for r in none.rows)
    assert not any(k.startswith("p_") and k != "p_value" for k in json.loads(render(none, "json"))[0])
    assert "p (Holm)" not in render(none, "markdown") and "not corrected" in " ".join(compare_notes(none))
    with pytest.raises(CompareError, match="holm"):
        compare(records, expected, "val_f1_macro", baseline="model.norm=bn_torch", correction="fdr")


@pytest.mark.parametrize("method", ["holm", "bonferroni"])
def test_adjusted_p_on_random_tables_equals_statsmodels(method):
    """Random tables of 2-8 settings (ties, a missing pair, p from 1e-4 to 1): the adjusted p
    of every tested row is multipletests' on the table's raw p-values."""
    rng = np.random.default_rng(26)
    for trial in range(30):
        norms = ("base", *(f"n{i}" for i in range(int(rng.integers(2, 9)))))
        expected = expected_grid(norms=norms, batches=(8,), seeds=range(int(rng.integers(3, 6))))
        shift = dict(zip(norms, rng.normal(0, 0.02, len(norms)) * (rng.uniform(size=len(norms)) < 0.5)))
        value = {(ep.point["model.norm"], ep.point["seed"]): 0.8 + shift[ep.point["model.norm"]]
                 + float(rng.normal(0, 0.01)) for ep in expected}
        if trial % 5 == 0:  # two identical settings: tied p-values
            value.update({("n1", seed): v for (norm, seed), v in list(value.items()) if norm == "n0"})
        records = [run_record(ep, {"val_acc": value[ep.point["model.norm"], ep.point["seed"]]}, start=i)
                   for i, ep in enumerate(expected) if i != 3 or trial % 5 == 0]  # else a row with a pair fewer
        result = compare(records, expected, "val_acc", baseline="norm=base", correction=method)
        if trial % 5 == 0:
            assert row_for(result, **{"model.norm": "n0"}).p_value == row_for(result, **{"model.norm": "n1"}).p_value
        tested = [r for r in result.rows if not math.isnan(r.p_value)]
        assert len(tested) == result.n_tests >= 2
        want = multipletests([r.p_value for r in tested], alpha=0.05, method=method)[1]
        assert [r.p_adjusted for r in tested] == pytest.approx(list(want), abs=1e-12, rel=0)
        assert [r.significant for r in tested] == [bool(p < 0.05) for p in want]


def test_small_n_note_names_the_degrees_of_freedom(sweep):
    expected, records = sweep
    notes = " ".join(compare_notes(compare(records, expected, "val_acc", baseline="norm=bn_torch")))
    assert "with 3 pairs a paired t-test has 2 degrees of freedom" in notes and "large effects" in notes


# --------------------------------------------------------------------------- diverged and failed runs


def with_lost_runs(expected, records):
    """gn bs8: seed 1 diverged (FAILED, TrainingDiverged), seed 2 finished with a NaN value;
    bn bs128: seed 0 failed (out of memory), seed 1 killed (not counted: it may resume)."""
    by_name = {ep.name: ep for ep in expected}
    lost = {"gn-bs8-s1": run_record(by_name["gn-bs8-s1"], {}, status="FAILED", start=1_000, tags={
                Tag.FAILURE_REASON: "TrainingDiverged: non-finite training loss (nan) at epoch 3; lower optim.lr"}),
            "gn-bs8-s2": run_record(by_name["gn-bs8-s2"], {"val_f1_macro": math.nan, "val_acc": math.nan},
                                    start=1_001),
            "bn-bs128-s0": run_record(by_name["bn-bs128-s0"], {}, status="FAILED", start=1_002,
                                      tags={Tag.FAILURE_REASON: "out of memory: CUDA out of memory"}),
            "bn-bs128-s1": run_record(by_name["bn-bs128-s1"], {}, status="KILLED", start=1_003)}
    return [r for r in records if r.name not in lost] + list(lost.values())


def test_diverged_and_failed_runs_are_counted_in_every_format(sweep):
    expected, records = sweep
    records = with_lost_runs(expected, records)
    result = compare(records, expected, "val_f1_macro", baseline="model.norm=bn_torch")
    gn8 = row_for(result, **{"model.norm": "gn", "data.batch_size": 8})
    bn128 = row_for(result, **{"model.norm": "bn", "data.batch_size": 128})
    assert (gn8.n_finished, gn8.n_diverged, gn8.n_failed) == (1, 2, 0)
    assert (bn128.n_finished, bn128.n_diverged, bn128.n_failed) == (1, 0, 1)
    assert sum(r.n_diverged + r.n_failed for r in result.rows) == 3

    rows = {(r["model.norm"], r["data.batch_size"]): r for r in json.loads(render(result, "json"))}
    assert (rows["gn", 8]["n_diverged"], rows["gn", 8]["n_failed"]) == (2, 0)
    assert (rows["bn", 128]["n_diverged"], rows["bn", 128]["n_failed"]) == (0, 1)
    assert (rows["gn", 128]["n_diverged"], rows["gn", 128]["n_failed"]) == (0, 0)
    by_key = {(r["model.norm"], r["data.batch_size"]): r for r in csv.DictReader(io.StringIO(render(result, "csv")))}
    assert (by_key["gn", "8"]["n_diverged"], by_key["bn", "128"]["n_failed"]) == ("2", "1")
    header, *body = md_rows_with_header(render(result, "markdown"))
    md = {(cells[1], cells[2]): dict(zip(header, cells)) for cells in body}
    assert md["gn", "8"]["div/fail"] == "2/0" and md["bn", "128"]["div/fail"] == "0/1"
    assert md["gn", "128"]["div/fail"] == "0/0" and md["gn", "8"]["n"] == "1/3"
    table = render(result, "table")
    assert "div/fail" in table and "2/0" in table and "0/1" in table
    flat = " ".join(table.split())
    assert "3 runs (2 diverged, 1 failed) have no value and are left out of the means" in flat
    no_lost = compare(sweep[1], expected, "val_f1_macro")
    assert not any("div/fail" in n for n in compare_notes(no_lost))  # nothing lost: no note


def test_failed_as_worst_counts_lost_runs_as_the_tables_worst_value(sweep):
    expected, records = sweep
    records = with_lost_runs(expected, records)
    finite = [r.metrics["val_f1_macro"] for r in records
              if r.status == "FINISHED" and math.isfinite(r.metrics["val_f1_macro"])]
    for direction, worst in (("max", min(finite)), ("min", max(finite))):
        drop = compare(records, expected, "val_f1_macro", direction=direction, baseline="model.norm=bn_torch")
        result = compare(records, expected, "val_f1_macro", direction=direction, baseline="model.norm=bn_torch",
                         failed_as="worst")
        assert result.worst == worst
        for key in (("gn", 8), ("bn", 128)):
            group = {"model.norm": key[0], "data.batch_size": key[1]}
            kept = list(row_for(drop, **group).values)
            row = row_for(result, **group)
            lost = row.n_diverged + row.n_failed
            assert row.mean == pytest.approx(np.mean(kept + [worst] * lost))
            assert row.std == pytest.approx(np.std(kept + [worst] * lost, ddof=1))
            assert row.n_finished == len(kept) == 1 and row.stats.n == 1 + lost
            assert row_for(drop, **group).mean == pytest.approx(np.mean(kept))
            assert row.n_pairs == 1 + lost  # the stand-ins pair with the baseline's seeds
        means = [r.mean for r in result.rows]
        assert means == sorted(means, reverse=direction == "max")
    rows = {(r["model.norm"], r["data.batch_size"]): r for r in json.loads(render(result, "json"))}
    gn8 = row_for(result, **{"model.norm": "gn", "data.batch_size": 8})
    assert rows["gn", 8]["mean"] == pytest.approx(gn8.mean) and rows["gn", 8]["n_diverged"] == 2
    assert sorted(rows["gn", 8]["values"]) == pytest.approx(sorted(gn8.values))
    flat = " ".join(render(result, "table").split())
    assert f"count as the highest val_f1_macro among the table's finished runs, {worst:.4f}" in flat
    with pytest.raises(CompareError, match="drop"):
        compare(records, expected, "val_f1_macro", failed_as="zero")


def test_a_setting_whose_seeds_all_diverged_is_ranked_only_with_worst():
    expected = expected_grid(norms=("bn", "gn"), batches=(8,))
    records = [run_record(ep, {"val_acc": 0.5 + i / 100}, start=i) if ep.point["model.norm"] == "bn" else
               run_record(ep, {}, status="FAILED", start=i, tags={Tag.FAILURE_REASON: "TrainingDiverged: nan"})
               for i, ep in enumerate(expected)]
    drop = row_for(compare(records, expected, "val_acc"), **{"model.norm": "gn"})
    assert (drop.rank, drop.n_diverged, drop.n_finished) == (None, 3, 0) and math.isnan(drop.mean)
    worst = row_for(compare(records, expected, "val_acc", failed_as="worst"), **{"model.norm": "gn"})
    assert (worst.rank, worst.n_finished) == (2, 0) and worst.mean == pytest.approx(0.5)


# --------------------------------------------------------------------------- pooled axes


def test_grouping_by_fewer_axes_names_the_pooled_ones(sweep):
    expected, records = sweep
    pooled = compare(records, expected, "val_acc", group_by=["norm"], baseline="norm=bn_torch")
    assert pooled.pooled_axes == ("data.batch_size",)
    assert all(r["pooled_axes"] == ["data.batch_size"] for r in json.loads(render(pooled, "json")))
    assert {r["pooled_axes"] for r in csv.DictReader(io.StringIO(render(pooled, "csv")))} == {"data.batch_size"}
    flat = " ".join(render(pooled, "table").split())
    assert "pooled over data.batch_size" in flat and "count as noise" in flat
    assert any("pooled over data.batch_size" in n for n in compare_notes(pooled))

    full = compare(records, expected, "val_acc", baseline="norm=bn_torch")
    assert full.pooled_axes == ()
    assert all(r["pooled_axes"] == [] for r in json.loads(render(full, "json")))
    assert not any("pooled" in n for n in compare_notes(full))
    # Grouping by a param that is not an axis pools every axis.
    assert compare(records, expected, "val_acc", group_by=["data.name"]).pooled_axes == (
        "model.norm", "data.batch_size")


def test_notes_name_the_test_and_warn_only_at_small_n(known_sweep):
    expected, records = known_sweep
    notes = compare_notes(compare(records, expected, "val_f1_macro", baseline="model.norm=bn_torch"))
    assert any("ttest_rel" in n and "two-sided" in n for n in notes)
    assert any(n.startswith("n = 4 pairs") and "normal" in n and "weak" in n for n in notes)
    assert not any("ttest_rel" in n for n in compare_notes(compare(records, expected, "val_f1_macro")))
    five = expected_grid(norms=("bn", "gn"), batches=(8,), seeds=range(5))
    rng = np.random.default_rng(3)
    records = [run_record(ep, {"val_acc": float(rng.uniform())}, start=i) for i, ep in enumerate(five)]
    notes = compare_notes(compare(records, five, "val_acc", baseline="norm=bn"))
    assert len(notes) == 3 and not any("weak" in n for n in notes)  # interval, test, correction


# --------------------------------------------------------------------------- render


@pytest.fixture
def result_with_baseline(sweep):
    expected, records = sweep
    records = [r for r in records if r.name != "gn-bs8-s2"]
    return compare(records, expected, "val_f1_macro", baseline="model.norm=bn_torch")


def test_render_json(result_with_baseline):
    rows = json.loads(render(result_with_baseline, "json"))
    assert len(rows) == len(result_with_baseline.rows)
    for got, row in zip(rows, result_with_baseline.rows):
        assert got["model.norm"] == row.group["model.norm"]
        assert got["data.batch_size"] == row.group["data.batch_size"]
        assert got["mean"] == pytest.approx(np.mean(got["values"]))
        assert got["std"] == pytest.approx(np.std(got["values"], ddof=1))
        assert got["n_finished"] == len(got["values"]) and got["n_expected"] == 3
        assert got["delta_mean"] == pytest.approx(row.delta_mean)
        assert got["n_pairs"] == row.n_pairs


def test_render_json_nan_is_null(sweep):
    expected, records = sweep
    records = [r for r in records if not r.name.startswith("gn-bs8-s") or r.name.endswith("s0")]
    rows = json.loads(render(compare(records, expected, "val_acc"), "json"))
    gn8 = next(r for r in rows if r["model.norm"] == "gn" and r["data.batch_size"] == 8)
    assert gn8["std"] is None and gn8["n_finished"] == 1


def test_render_csv(result_with_baseline):
    rows = list(csv.DictReader(io.StringIO(render(result_with_baseline, "csv"))))
    assert len(rows) == 6
    assert {"model.norm", "data.batch_size", "mean", "std", "n_finished", "n_expected",
            "delta_mean", "delta_std", "n_pairs"} <= set(rows[0])
    for got, row in zip(rows, result_with_baseline.rows):
        assert float(got["mean"]) == pytest.approx(row.mean)
        assert float(got["std"]) == pytest.approx(row.std)
        assert int(got["n_finished"]) == row.n_finished
        assert float(got["delta_mean"]) == pytest.approx(row.delta_mean)


def test_render_markdown_and_table(result_with_baseline):
    md = render(result_with_baseline, "markdown")
    lines = md.strip().splitlines()
    assert lines[0].startswith("| rank") and "val_f1_macro mean ± std" in lines[0]
    assert lines[1].startswith("|---") and set(lines[1]) <= set("|-: ")
    assert len(lines) == 2 + 6
    best = result_with_baseline.rows[0]
    assert f"{best.mean:.4f} ± {best.std:.4f}" in lines[2]
    assert "2/3" in md  # gn bs8 lost one seed

    table = render(result_with_baseline, "table")
    assert "val_f1_macro mean ± std" in table
    assert "norm" in table and "batch_size" in table and "Δ vs norm=bn_torch" in table
    assert f"{best.mean:.4f}" in table and "3/3" in table
    assert "\x1b[" not in table  # plain text, no ANSI codes


def test_render_every_format_and_unknown(result_with_baseline):
    for fmt in FORMATS:
        assert render(result_with_baseline, fmt).strip()
    with pytest.raises(ValueError, match="markdown"):
        render(result_with_baseline, "xlsx")


# --------------------------------------------------------------------------- report


def md_rows(text: str) -> list[list[str]]:
    lines = text.strip().splitlines()
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def test_report_single_seed():
    expected = expected_grid(seeds=(0,))
    rng = np.random.default_rng(7)
    records = [run_record(ep, random_metrics(rng), start=i) for i, ep in enumerate(expected)]
    text = report(records, expected)
    header = text.splitlines()[0]
    assert [c.strip() for c in header.strip("|").split("|")] == ["Setting", "set", "Accuracy", "F1 micro", "F1 macro",
                                                                 "n"]
    rows = md_rows(text)
    assert len(rows) == 3 * len(NORMS) * len(BATCHES)
    labels = [r[0] for r in rows[::3]]
    assert labels == [f"{n} bs{b}" for n in NORMS for b in BATCHES]  # expected order
    assert all(r[0] == "" for i, r in enumerate(rows) if i % 3)
    assert [r[1] for r in rows[:3]] == ["train", "val", "test"]
    for i, rec in enumerate(records):
        for j, split in enumerate(("train", "val", "test")):
            cells = rows[3 * i + j][2:]
            want = [f"{rec.metrics[f'{split}_{m}']:.3f}" for m in ("acc", "f1_micro", "f1_macro")] + ["1"]
            assert cells == want


def test_report_three_seeds(sweep):
    expected, records = sweep
    rows = md_rows(report(records, expected))
    assert len(rows) == 18
    i = 3 * (NORMS.index("gn") * len(BATCHES) + BATCHES.index(8)) + 1  # gn bs8, val
    assert rows[i - 1][0] == "gn bs8" and rows[i][1] == "val"
    vals = np.array(list(values_for(records, "val_f1_micro", **{"model.norm": "gn", "data.batch_size": 8}).values()))
    assert rows[i][3] == f"{vals.mean():.3f} ± {vals.std(ddof=1):.3f}"

    csv_rows = list(csv.DictReader(io.StringIO(report(records, expected, fmt="csv"))))
    assert list(csv_rows[0]) == ["Setting", "set", "Accuracy", "F1 micro", "F1 macro", "n"]
    assert {row["n"] for row in csv_rows} == {"3"}
    assert len(csv_rows) == 18 and csv_rows[i]["F1 micro"] == rows[i][3]
    assert csv_rows[i]["Setting"] == "gn bs8"  # csv repeats the label on every row


def test_report_missing_setting_shows_dash(sweep):
    expected, records = sweep
    records = [r for r in records if not r.name.startswith("bn-bs128")]
    rows = md_rows(report(records, expected))
    i = 3 * (NORMS.index("bn") * len(BATCHES) + BATCHES.index(128))
    assert rows[i][0] == "bn bs128" and rows[i][2:] == ["–", "–", "–", "0"]


def test_report_stats_match_numpy(sweep):
    expected, records = sweep
    records = [r for r in records if r.name != "gn-bs8-s1"]  # one seed missing
    nan_run = next(r for r in records if r.name == "bn-bs128-s0")
    records = [r for r in records if r is not nan_run]
    records.append(RunRecord(**{**vars(nan_run), "metrics": {**nan_run.metrics, "test_acc": math.nan}}))
    settings = report_stats(records, expected)
    assert [dict(s.values) for s in settings] == [{"model.norm": n, "data.batch_size": b} for n in NORMS for b in BATCHES]
    for s in settings:
        assert [split.split for split in s.splits] == list(SPLITS)
        for split in s.splits:
            assert list(split.scores) == list(SCORES)
            for score, stats in split.scores.items():
                vals = np.array(list(values_for(records, f"{split.split}_{score}", **s.values).values()))
                vals = vals[np.isfinite(vals)]  # a diverged value is not counted
                assert stats.n == len(vals)
                assert stats.mean == pytest.approx(vals.mean())
                assert stats.std == pytest.approx(vals.std(ddof=1))
    gn8 = settings[NORMS.index("gn") * len(BATCHES) + BATCHES.index(8)]
    assert gn8.splits[0].scores["acc"].n == 2
    bn128 = settings[NORMS.index("bn") * len(BATCHES) + BATCHES.index(128)]
    assert bn128.splits[2].scores["acc"].n == 2 and bn128.splits[2].scores["f1_macro"].n == 3


def test_render_report_json_and_table_from_the_same_stats(sweep):
    expected, records = sweep
    records = [r for r in records if not r.name.startswith("bn-bs128")]
    settings = report_stats(records, expected)
    rows = json.loads(render_report(settings, "json"))
    assert len(rows) == len(settings) * len(SPLITS)
    for i, row in enumerate(rows):
        setting, split = settings[i // len(SPLITS)], settings[i // len(SPLITS)].splits[i % len(SPLITS)]
        assert row["setting"] == setting.label and row["set"] == split.split
        for score in SCORES:
            stats = split.scores[score]
            if stats.n:
                assert (row[score], row[f"{score}_std"]) == pytest.approx((stats.mean, stats.std))
            else:
                assert row[score] is None and row[f"{score}_std"] is None
            assert row[f"{score}_n"] == stats.n
    assert render_report(settings, "markdown") == report(records, expected)
    table = render_report(settings, "table")
    assert "gn bs8" in table and "F1 macro" in table and "\x1b[" not in table
    assert table.count("├") == len(settings)  # a rule under the header and between settings, none between splits
    with pytest.raises(ValueError, match="markdown"):
        render_report(settings, "xlsx")


def test_report_latex_is_a_booktabs_tabular(sweep):
    expected, records = sweep
    records = [r for r in records if not r.name.startswith("bn-bs128")]  # a setting without runs
    text = report(records, expected, fmt="latex")
    lines = [line for line in text.splitlines() if not line.startswith("%")]
    assert lines[0] == r"\begin{tabular}{llrrrr}" and lines[-1] == r"\end{tabular}"
    assert lines[1] == r"\toprule" and lines[3] == r"\midrule" and lines[-2] == r"\bottomrule"
    assert lines[2] == r"Setting & set & Accuracy & F1 micro & F1 macro & n \\"
    rows = [line for line in lines[4:-2] if line != r"\addlinespace"]
    assert len(rows) == 18 and lines[4:-2].count(r"\addlinespace") == 5
    assert all(row.endswith(r" \\") and row.count(" & ") == 5 for row in rows)
    assert rows[0].startswith(r"bn\_torch bs8 & train & ") and rows[1].startswith(" & val & ")
    vals = np.array(list(values_for(records, "train_acc", **{"model.norm": "bn_torch", "data.batch_size": 8}).values()))
    assert rows[0].split(" & ")[2] == rf"{vals.mean():.3f} $\pm$ {vals.std(ddof=1):.3f}"
    assert rows[9] == r"bn bs128 & train & -- & -- & -- & 0 \\"
    assert "±" not in text and "–" not in text and "_" not in text.replace(r"\_", "")
    assert latex_escape("a_b & 50% #1 {x} $y ~^ \\") == (
        r"a\_b \& 50\% \#1 \{x\} \$y \textasciitilde{}\textasciicircum{} \textbackslash{}")


def test_the_report_layout_follows_the_metric_names_the_runs_logged(sweep):
    expected, records = sweep
    facts = {"train_seconds": 9.0, "best_epoch": 3.0, "epoch/train_loss": 0.2}  # a run fact is no score
    study = [dataclasses.replace(r, metrics={**r.metrics, **facts}, steps={"epoch/val_acc": 5, "epoch/train_loss": 5})
             for r in records]
    assert table_layout(study) == (SPLITS, SCORES)
    assert sweep_metric(study) == "test_acc" and sweep_metric(study, "val_f1_macro") == "val_f1_macro"
    own = [dataclasses.replace(r, metrics={"test_acc": 0.8, "val_acc": 0.7, "train_loss": 0.1, "system/cpu": 3.0},
                               steps={"val_acc": 4, "train_loss": 4, "system/cpu": 2}) for r in records]
    assert table_layout(own) == (("test",), ("acc",)) and sweep_metric(own) == "test_acc"
    assert sweep_metric([dataclasses.replace(r, metrics={"reward": 1.0, "b": 2.0}) for r in records]) == "b"
    steps = ["epoch/feat_q01", "epoch/feat_q99", "epoch/lr", "epoch/train_acc", "epoch/train_loss", "epoch/val_acc",
             "epoch/val_f1_macro", "epoch/val_loss"]
    assert curve_panels(steps) == (
        Panel("loss", "loss", (("epoch/train_loss", "train loss"), ("epoch/val_loss", "val loss"))),
        Panel("val accuracy", "accuracy", (("epoch/val_acc", "val accuracy"),)))
    assert quantile_names(reversed(steps)) == {"epoch/feat_q01": 0.01, "epoch/feat_q99": 0.99}
    assert curve_panels(["train_acc", "train_loss"])[1].series == (("train_acc", "train accuracy"),)
    assert [p.title for p in curve_panels(["episode_len", "lr", "reward"])] == ["episode_len", "lr"]
    assert curve_metric(steps, "val_f1_macro") == "epoch/val_f1_macro"
    assert curve_metric(steps, "test_acc", "val_f1_macro") == "epoch/val_f1_macro"
    assert curve_metric(["train_loss", "val_acc"], "test_acc") == "val_acc" and curve_metric([], "test_acc") is None


def test_setting_styles_never_draw_two_settings_alike():
    norms = ("bn_torch", "bn", "in", "bin", "ln", "gn", "nn")
    settings = [(n, f"bs{b}") for n in norms for b in (8, 128)]
    styles = setting_styles(settings)
    looks = [(s["color"], str(s["linestyle"])) for s in styles]
    assert len(set(looks)) == len(settings)
    by = dict(zip(settings, styles))
    assert by["bn_torch", "bs8"]["color"] == by["bn_torch", "bs128"]["color"]  # colour: the norm
    assert by["bn_torch", "bs8"]["linestyle"] == by["gn", "bs8"]["linestyle"]  # dashes: the batch size
    assert by["bn_torch", "bs8"]["color"] != by["gn", "bs8"]["color"]
    many = setting_styles([(f"n{i}",) for i in range(25)])  # more values than colours
    assert len({(s["color"], str(s["linestyle"])) for s in many}) == 25


def test_stats_against_numpy():
    vals = (0.5, 0.75, 0.625, 0.9)
    stats = Stats(vals)
    assert (stats.n, stats.min, stats.max) == (4, 0.5, 0.9)
    assert stats.mean == pytest.approx(np.mean(vals)) and stats.std == pytest.approx(np.std(vals, ddof=1))
    one, empty = Stats((0.5,)), Stats()
    assert one.mean == 0.5 and math.isnan(one.std)
    assert empty.n == 0 and all(math.isnan(x) for x in (empty.mean, empty.std, empty.min, empty.max))


def test_match_units_latest_record_per_run_key(sweep):
    expected, records = sweep
    ep = expected[0]
    records = list(records) + [
        run_record(ep, {}, status="FAILED", start=5_000, run_id="failed-late"),
        run_record(ep, {"val_acc": 0.1}, start=5_000, run_id="tie-listed-last"),  # same start: listed last wins
        run_record(ep, {}, start=6_000, run_id="pruned",
               tags={Tag.KIND: Kind.TRIAL, Tag.TRIAL_STATE: TrialState.PRUNED}),
    ]
    units, axes = match_units(records, expected)
    assert [u.expected for u in units] == expected
    assert axes == ("model.norm", "data.batch_size")
    first = units[0]
    assert first.latest.run_id == "tie-listed-last" and first.finished.run_id == "tie-listed-last"
    assert first.expected.point == {"model.norm": "bn_torch", "data.batch_size": 8, "seed": 0}


def test_setting_labels_are_run_names_without_the_seed():
    def label(name: str, point: dict) -> str:
        return setting_label(ExpectedPoint(name, "k", point, ""))

    assert label("gn-bs8-s0", {"model.norm": "gn", "data.batch_size": 8, "seed": 0}) == "gn bs8"
    assert label("width64-relu-s3", {"width": 64, "act": "relu", "seed": 3}) == "width64 relu"  # any axes
    assert label("lr1e-05-s0", {"optim.lr": 1e-5, "seed": 0}) == "lr1e-05"  # a dash inside a value stays
    assert label("s0", {"seed": 0}) == "(base)"  # no axes


def test_short_names_keep_ambiguous_keys_whole():
    assert short_names(["model.norm", "data.batch_size", "seed"]) == ["norm", "batch_size", "seed"]
    assert short_names(["model.norm", "head.norm", "optim.lr"]) == ["model.norm", "head.norm", "lr"]


# --------------------------------------------------------------------------- summary rows


def test_summary_rows(sweep):
    expected, records = sweep
    records = [r for r in records if r.name != "bn-bs8-s1"]
    failed_ep = next(ep for ep in expected if ep.name == "gn-bs8-s0")
    records.append(run_record(failed_ep, {}, status="FAILED", start=90_000, run_id="rerun-failed"))
    rows = summary_rows(records, expected)
    assert [r["name"] for r in rows] == [ep.name for ep in expected]
    by_name = {r["name"]: r for r in rows}
    assert by_name["bn-bs8-s1"]["status"] == "missing" and by_name["bn-bs8-s1"]["run_id"] is None
    assert by_name["gn-bs8-s0"]["status"] == "FAILED" and by_name["gn-bs8-s0"]["run_id"] == "rerun-failed"
    row = by_name["bn_torch-bs128-s2"]
    rec = next(r for r in records if r.name == "bn_torch-bs128-s2")
    assert row["status"] == "FINISHED" and row["run_id"] == rec.run_id
    assert (row["model.norm"], row["data.batch_size"], row["seed"]) == ("bn_torch", 128, 2)
    assert row["val_f1_macro"] == rec.metrics["val_f1_macro"] and row["best_epoch"] == rec.metrics["best_epoch"]
    assert not any("/" in k for r in rows for k in r)
    assert len({tuple(r) for r in rows}) == 1  # same keys everywhere: DictWriter-ready


# --------------------------------------------------------------------------- plots


def test_metric_by_axis_bars(sweep, tmp_path):
    expected, records = sweep
    records = [r for r in records if not r.name.startswith("gn-bs128")]  # one group without runs
    result = compare(records, expected, "val_f1_macro")
    fig = metric_by_axis(result, "val_f1_macro", "model.norm")
    ax = fig.axes[0]
    assert len(ax.patches) == 5  # 3 norms × 2 batch sizes, minus the empty group
    assert [t.get_text() for t in ax.get_xticklabels()] == list(NORMS)
    assert len(ax.get_legend().get_texts()) == 2
    heights = sorted(p.get_height() for p in ax.patches)
    assert heights == pytest.approx(sorted(r.mean for r in result.rows if r.n_finished))
    fig.savefig(tmp_path / "by_norm.png")
    assert (tmp_path / "by_norm.png").stat().st_size > 0

    # One axis only, short axis name: one bar per value, no legend.
    single = compare(records, expected, "val_acc", group_by=["data.batch_size"])
    fig = metric_by_axis(single, None, "batch_size")
    ax = fig.axes[0]
    assert len(ax.patches) == 2 and ax.get_legend() is None
    assert [t.get_text() for t in ax.get_xticklabels()] == ["8", "128"]
    fig.savefig(tmp_path / "by_bs.png")
    with pytest.raises(ValueError, match="axis"):
        metric_by_axis(single, "val_acc", "model.norm")


def test_val_curves(tmp_path):
    curves = {
        "gn bs8": [[0.1, 0.3, 0.5, 0.6], [0.2, 0.35, 0.5], [0.15, 0.3]],
        "bn bs8": [[0.3, 0.5, 0.7, 0.75, 0.76]],
        "ln bs8": [],
    }
    settings = [SettingCurves(label, {"model.norm": label.split()[0], "data.batch_size": 8},
                              tuple(map(str, range(len(seeds)))), tuple({"val_acc": s} for s in seeds))
                for label, seeds in curves.items()]
    fig = val_curves(settings, "val_acc")
    ax = fig.axes[0]
    assert len(ax.lines) == 2
    gn = ax.lines[0]
    assert list(gn.get_xdata()) == [1, 2, 3, 4]
    assert gn.get_ydata() == pytest.approx([0.15, (0.3 + 0.35 + 0.3) / 3, 0.5, 0.6])
    assert len(ax.get_legend().get_texts()) == 2
    assert gn.get_color() != ax.lines[1].get_color()  # no two settings drawn alike
    fig.savefig(tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0
