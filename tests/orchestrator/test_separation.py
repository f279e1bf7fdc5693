"""``orch sweep --until-separated``: the error-controlled rule (checked against scipy and
statsmodels, and by simulation against its guarantee), its rounds on a real sweep,
``orch compare``'s mark on settings that got extra seeds, and ``--confirm N``."""

from __future__ import annotations

import collections
import importlib.util
import json
import math

import numpy as np
import pytest
import scipy.stats
from mlflow.tracking import MlflowClient
from statsmodels.stats.multitest import multipletests

from conftest import REPO, TINY_BASE, children, invoke, orch, parents, run_record, write_grid
from orchestrator.analyze.render import render
from orchestrator.analyze.results import compare
from orchestrator.grid.load import load_grid
from orchestrator.store.schema import Artifact, ExpectedPoint, Kind, Status, Tag, read_points
from orchestrator.analyze.separation import Separation, holm, paired_p, separate
from orchestrator.launch.rounds import ConfirmError, confirm_spec, restore_added

# --------------------------------------------------------------------------- the decision


def test_paired_p_is_scipys_one_sided_paired_t_test_on_the_common_seeds():
    rng = np.random.default_rng(3)
    values = rng.normal(size=(5, 7))
    values[1, 5:] = np.nan  # setting 1 lacks seeds 5 and 6
    values[3, 0] = np.nan
    p = paired_p(values)
    for i in range(5):
        for j in range(5):
            if i != j:
                both = ~np.isnan(values[i]) & ~np.isnan(values[j])
                want = scipy.stats.ttest_rel(values[i, both], values[j, both], alternative="greater").pvalue
                assert p[i, j] == pytest.approx(want, abs=1e-12)


def test_holm_matches_statsmodels(frozen_heap):
    rng = np.random.default_rng(4)
    for p in rng.uniform(size=(20, 12)) ** 4:
        assert np.allclose(holm(p), multipletests(p, method="holm")[1], rtol=0, atol=1e-12)
    with_gap = np.array([0.01, np.nan, 0.02, 0.5])  # NaN: not a hypothesis
    assert np.allclose(holm(with_gap)[[0, 2, 3]], multipletests([0.01, 0.02, 0.5], method="holm")[1])
    assert np.isnan(holm(with_gap)[1])


def test_a_clear_gap_separates_and_equal_values_do_not():
    seeds = np.arange(6.0)
    values = np.stack([seeds * 0.01 + 1.0, seeds * 0.013, seeds * 0.01 + 1.0])  # 0 and 2 tie, 1 is far behind
    d = separate(values, alpha=0.05, looks=5)
    assert int(d.leader) == 0  # the first of a tie leads
    assert d.separated.tolist() == [False, True, False]
    assert d.p_holm[2] == 1.0  # identical values: no evidence either way
    low = separate(-values, alpha=0.05, looks=5, direction="min")  # the same ranking, lower is better
    assert low.separated.tolist() == [False, True, False]
    nothing = separate(np.ones((3, 6)), alpha=0.05, looks=5)
    assert not nothing.separated.any()


def test_pairs_by_seed_and_ignores_seeds_only_one_setting_has():
    shared = np.array([0.0, 5.0, -3.0, 8.0, 2.0])  # seed effects both settings share
    a = np.concatenate([shared + 0.5 + np.array([0.01, -0.01, 0.02, 0.0, -0.02]), [np.nan, np.nan]])
    b = np.concatenate([shared, [-100.0, -100.0]])  # seeds 5 and 6: b only
    d = separate(np.stack([a, b]), alpha=0.05, looks=1)
    # paired on seeds 0-4 the 0.5 gap is clear, though unpaired intervals overlap widely
    assert int(d.leader) == 0 and d.separated.tolist() == [False, True]
    moved = np.stack([a, np.concatenate([shared, [-50.0, -50.0]])])  # b's own seeds change; a still leads
    assert separate(moved, alpha=0.05, looks=1).p_holm[1] == pytest.approx(d.p_holm[1], abs=1e-15)
    one_common = np.array([[1.0, np.nan, 9.0], [0.0, 0.5, np.nan]])  # one common seed: no test
    assert not separate(one_common, alpha=0.05, looks=1).separated.any()


def test_more_looks_and_more_settings_ask_for_more_evidence():
    values = np.array([[1.0, 1.2, 0.9, 1.1], [0.0, 0.1, -0.05, 0.2]])  # p ≈ 1e-4, one-sided
    p = scipy.stats.ttest_rel(values[0], values[1], alternative="greater").pvalue
    d = separate(values, alpha=0.05, looks=1)
    assert d.p_holm[1] == pytest.approx(2 * p)  # Holm over 2 ordered pairs, the smallest first
    assert d.level == 0.05 and d.separated[1]
    assert separate(values, alpha=0.05, looks=5).level == 0.01
    many = np.vstack([values, np.zeros((12, 4))])  # 14 settings: 182 ordered pairs
    assert separate(many, alpha=0.05, looks=5).p_holm[1] >= min(1.0, 170 * p)
    assert Separation("m", max_seeds=10, per_round=2, grid_seeds=3).looks == 5  # 3, 5, 7, 9, 10
    assert Separation("m", max_seeds=4, per_round=1, grid_seeds=2).looks == 3


# --------------------------------------------------------------------------- the guarantee, by simulation


def _benchmark():
    spec = importlib.util.spec_from_file_location("separation_error", REPO / "benchmarks" / "separation_error.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("k", [2, 3, 7, 14])
def test_with_all_settings_equal_a_separation_is_declared_in_at_most_alpha_of_studies(k):
    bench = _benchmark()
    studies, alpha = 3000, 0.05
    margin = 3 * math.sqrt(alpha * (1 - alpha) / studies)  # three binomial standard errors
    new = bench.simulate(bench.new_rule(alpha), k, 0.0, studies, seed=11 + k)
    assert new["false"] <= alpha + margin, new
    if k == 14:  # the overlap rule it replaces does not keep the bound
        old = bench.simulate(bench.old_overlap, k, 0.0, studies, seed=11 + k)
        assert old["false"] > 0.15, old


def test_a_setting_3_sd_behind_is_found_and_the_bound_holds_beside_it():
    bench = _benchmark()
    result = bench.simulate(bench.new_rule(0.05), 3, 3.0, 2000, seed=5)
    assert result["power"] > 0.9 and result["false"] <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 2000)


# --------------------------------------------------------------------------- compare's mark


def test_compare_marks_settings_that_got_extra_seeds():
    expected = [ExpectedPoint(name=f"{n}-s{s}", run_key=f"k-{n}-{s}",
                              point={"model.norm": n, "data.batch_size": 8, "seed": s},
                              setting=f"model.norm={n},data.batch_size=8", added=s >= 2)
                for n, seeds in (("bn", (0, 1, 2, 3)), ("gn", (0, 1))) for s in seeds]
    records = [run_record(ep, {"val_f1_macro": 0.5 + 0.1 * (ep.point["model.norm"] == "bn") + 0.01 * i})
               for i, ep in enumerate(expected)]
    assert read_points(json.loads(json.dumps([ep.to_json() for ep in expected]))) == expected
    result = compare(records, expected, "val_f1_macro")
    rows = {r["model.norm"]: r for r in json.loads(render(result, "json"))}
    assert rows["bn"]["extra_seeds"] is True and rows["gn"]["extra_seeds"] is False
    assert "extra_seeds" in render(result, "csv").splitlines()[0] and ",true" in render(result, "csv")
    table = render(result, "table")
    assert "4/4†" in table and "2/2†" not in table
    assert "optimistic for the leader" in table and "--confirm N" in table
    plain = compare(records[:2] + records[4:], [e for e in expected if not e.added], "val_f1_macro")
    assert "extra_seeds" not in render(plain, "json") and "†" not in render(plain, "table")


def test_confirm_spec_runs_the_leader_and_the_settings_not_separated_on_fresh_seeds(tmp_path):
    spec = load_grid(write_grid(tmp_path / "g.yaml", "confirm", {"optim.lr": [0.1, 0.01, 0.001]}, seeds=(0, 1, 2)))
    added = [ExpectedPoint(name="x", run_key="k", point={"optim.lr": 0.1, "seed": 4}, setting="optim.lr=0.1")]
    decision = {"leader": {"setting": {"optim.lr": 0.01}}, "not_separated": [{"setting": {"optim.lr": 0.1}}],
                "separated": [{"setting": {"optim.lr": 0.001}}]}
    confirm = confirm_spec(spec, decision, added, 2)
    assert [(r.point["optim.lr"], r.point["seed"]) for r in confirm.runs] == [(0.01, 5), (0.1, 5), (0.01, 6), (0.1, 6)]
    assert confirm.seeds == (5, 6) and confirm.sweep_id != spec.sweep_id
    assert [r.run_key for r in confirm.runs] == [r.run_key for r in confirm_spec(spec, decision, added, 2).runs]
    with pytest.raises(ConfirmError, match="not in this grid"):
        confirm_spec(spec, {**decision, "leader": {"setting": {"optim.lr": 0.5}}}, added, 2)
    with pytest.raises(ConfirmError, match="no leader"):
        confirm_spec(spec, {**decision, "leader": None}, added, 2)


def test_added_seeds_of_a_users_own_entry_are_that_entrys_runs(tmp_path):
    """--confirm and a rerun's restored seeds (as the rounds) build their runs through the grid's own
    entry: the same names and run keys as a grid that lists those seeds itself."""
    (tmp_path / "own_rounds.py").write_text("def main(config, run):\n    return {'score': config['lr']}\n")

    def spec(seeds):
        text = f"name: own\nentry: own_rounds:main\ngrid:\n  lr: [0.1, 0.2]\nseeds: {list(seeds)}\n"
        (tmp_path / "g.yaml").write_text(text)
        return load_grid(tmp_path / "g.yaml")

    def runs(of):
        return sorted((r.point["lr"], r.point["seed"], r.name, r.run_key) for r in of.runs)

    planned, listed = spec((0, 1)), spec((0, 1, 5, 6))
    decision = {"leader": {"setting": {"lr": 0.2}}, "not_separated": [{"setting": {"lr": 0.1}}]}
    confirm = confirm_spec(planned, decision, [], 2)  # seeds 2 and 3, the leader first
    assert [r.point["lr"] for r in confirm.runs] == [0.2, 0.1, 0.2, 0.1]
    assert runs(confirm) == runs(spec((2, 3)))
    added = [ExpectedPoint(name=r.name, run_key=r.run_key, point=r.point, setting=r.setting)
             for r in listed.runs if r.point["seed"] in (5, 6)]
    assert runs(restore_added(planned, added)) == runs(listed)


# --------------------------------------------------------------------------- a real sweep


@pytest.mark.integration  # real sweeps
@pytest.mark.slow
def test_until_separated_adds_seeds_only_where_undecided_then_confirm_reruns_the_top_on_fresh_seeds(tmp_path):
    # lr 0.1 under precision auto and fp32 trains identically on the CPU: the two settings tie and
    # can never separate, so both go to --max-seeds. lr 1e-4 barely learns: separated from the
    # leader on the grid's three seeds, so it gets none.
    base = {**TINY_BASE, "train": {"max_epochs": 3, "patience": 3}}
    axes = {"optim.lr": [0.1, 0.0001], "train.precision": ["auto", "fp32"]}
    grid = write_grid(tmp_path / "g.yaml", "separate", axes, seeds=(0, 1, 2), base=base)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ("sweep", str(grid), "--workers", "2", "--tracking-uri", uri, "--until-separated", "val_f1_macro",
            "--max-seeds", "4", "--seeds-per-round", "1")
    proc = orch(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr

    spec = load_grid(grid)
    kids = children(uri, spec.sweep_id)
    assert all(k.info.status == Status.FINISHED for k in kids)
    assert len({k.data.tags[Tag.RUN_KEY] for k in kids}) == len(kids)  # every point once
    seeds = collections.defaultdict(set)
    for k in kids:
        seeds[(float(k.data.params["optim.lr"]), k.data.params["train.precision"])].add(int(k.data.params["seed"]))
    assert seeds == {(0.1, "auto"): {0, 1, 2, 3}, (0.1, "fp32"): {0, 1, 2, 3},
                     (0.0001, "auto"): {0, 1, 2}, (0.0001, "fp32"): {0, 1, 2}}
    assert len({k.data.tags[Tag.PID] for k in kids}) <= 2  # the two slots kept their processes across rounds
    # the summary says what was declared, at which alpha, and the guarantee
    assert "separated from the leader: optim.lr=0.0001" in proc.stdout
    assert "not separated: optim.lr=0.1" in proc.stdout
    assert "alpha/L = 0.05/2" in proc.stdout and "guarantee: for any true means" in proc.stdout

    (parent,) = parents(uri, spec.sweep_id)
    client = MlflowClient(tracking_uri=uri)
    points = json.loads(open(client.download_artifacts(parent.info.run_id, Artifact.POINTS, str(tmp_path))).read())
    assert len(points) == 14  # the added points are ordinary points of the sweep, marked as added
    assert sorted(p["point"]["seed"] for p in points if p.get("added")) == [3, 3]
    verdict = json.loads(open(client.download_artifacts(parent.info.run_id, Artifact.SEPARATION,
                                                        str(tmp_path))).read())
    assert verdict["alpha"] == 0.05 and verdict["looks"] == 2 and len(verdict["separated"]) == 2

    shown = invoke("compare", "--tracking-uri", uri, "--metric", "val_f1_macro", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    extra = {(r["optim.lr"], r["train.precision"]): r["extra_seeds"] for r in json.loads(shown.stdout)}
    assert extra == {(0.1, "auto"): True, (0.1, "fp32"): True, (0.0001, "auto"): False, (0.0001, "fp32"): False}

    again = orch(*args, cwd=tmp_path)  # nothing is missing and nothing more can be added
    assert again.returncode == 0, again.stderr
    assert "0 to run" in again.stderr and "more point" not in again.stderr
    assert len(children(uri, spec.sweep_id)) == 14
    plain = orch("sweep", str(grid), "--workers", "2", "--tracking-uri", uri, cwd=tmp_path)  # no rounds asked
    assert plain.returncode == 0, plain.stderr
    assert "4/4" in plain.stdout and "3/3" in plain.stdout  # its closing table keeps the added seeds

    confirm = orch("sweep", str(grid), "--workers", "2", "--tracking-uri", uri, "--confirm", "2", cwd=tmp_path)
    assert confirm.returncode == 0, confirm.stderr
    confirm_runs = [r for r in client.search_runs([parent.info.experiment_id])
                    if r.data.tags.get(Tag.KIND) == Kind.POINT and r.data.tags.get(Tag.SWEEP) != spec.sweep_id]
    assert sorted((float(r.data.params["optim.lr"]), r.data.params["train.precision"], int(r.data.params["seed"]))
                  for r in confirm_runs) == [(0.1, "auto", 4), (0.1, "auto", 5), (0.1, "fp32", 4), (0.1, "fp32", 5)]
    # the newest sweep is the confirmation: fresh seeds only, nothing marked
    table = invoke("compare", "--tracking-uri", uri, "--metric", "val_f1_macro")
    assert table.returncode == 0 and "2/2" in table.stdout and "†" not in table.stdout


@pytest.mark.integration  # a real sweep
@pytest.mark.slow
def test_until_separated_goes_on_past_diverged_points_and_decides_on_the_settings_with_values(tmp_path):
    # lr 1e6 diverges on every seed: those settings fail (exit 1) and have no values. The two tied
    # lr 0.1 settings still get their rounds and a verdict; the diverged points are not retried in them.
    base = {**TINY_BASE, "train": {"max_epochs": 2, "patience": 2}}
    axes = {"optim.lr": [0.1, 1e6], "train.precision": ["auto", "fp32"]}
    grid = write_grid(tmp_path / "g.yaml", "separate-diverged", axes, seeds=(0, 1, 2), base=base)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = orch("sweep", str(grid), "--workers", "2", "--tracking-uri", uri, "--until-separated", "val_f1_macro",
                "--max-seeds", "4", "--seeds-per-round", "1", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    spec = load_grid(grid)
    seeds = collections.defaultdict(set)
    for k in children(uri, spec.sweep_id):
        seeds[(float(k.data.params["optim.lr"]), k.data.params["train.precision"], k.info.status)].add(
            int(k.data.params["seed"]))
    assert seeds[(0.1, "auto", Status.FINISHED)] == seeds[(0.1, "fp32", Status.FINISHED)] == {0, 1, 2, 3}
    assert not seeds[(1e6, "auto", Status.FINISHED)] and seeds[(1e6, "auto", Status.FAILED)] == {0, 1, 2}
    assert "not separated: optim.lr=0.1" in proc.stdout
    (parent,) = parents(uri, spec.sweep_id)
    verdict = json.loads(open(MlflowClient(tracking_uri=uri).download_artifacts(
        parent.info.run_id, Artifact.SEPARATION, str(tmp_path))).read())
    assert verdict["looks"] == 2 and not verdict["separated"]


@pytest.mark.integration  # opens a SQLite store
@pytest.mark.slow
def test_until_separated_and_confirm_refuse_bad_input_before_anything_starts(tmp_path):
    grid = write_grid(tmp_path / "g.yaml", "separate-bad", {"model.norm": ["bn", "gn"]}, seeds=(0, 1))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for extra, needle in ((["--until-separated", "val_accuracy"], "not a summary metric"),
                          (["--until-separated", "val_f1_macro", "--max-seeds", "2"], "no room"),
                          (["--until-separated", "val_f1_macro", "--storage", "sqlite:///q.db"], "cannot queue"),
                          (["--until-separated", "val_f1_macro", "--separation-alpha", "1.5"], "separation-alpha"),
                          (["--until-separated", "val_f1_macro", "--confirm", "3"], "drop one"),
                          (["--separation-alpha", "0.1", "--max-seeds", "5"], "--max-seeds, --separation-alpha only"),
                          (["--direction", "min"], "--direction only apply with --until-separated")):
        proc = invoke("sweep", str(grid), "--tracking-uri", uri, *extra, cwd=tmp_path)
        assert proc.returncode == 2, (extra, proc.stderr)
        assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()
    proc = invoke("sweep", str(grid), "--tracking-uri", uri, "--confirm", "3", cwd=tmp_path)
    assert proc.returncode == 2 and "no finished --until-separated sweep" in proc.stderr, proc.stderr
