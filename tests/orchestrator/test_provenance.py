"""Provenance on every run (entry, git commit, uncommitted diff, Python, packages) and ``orch diff``:
the comparison on dicts, git states of real repositories, and two real ``orch run``s of a copy of
this repository that differ in one parameter and one uncommitted line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from conftest import REPO, all_runs, invoke
from orchestrator.analyze.diff import diff_code, diff_packages, diff_params, diff_runs
from orchestrator.grid.entry import BUILTIN
from orchestrator.store import provenance
from orchestrator.store.schema import Artifact, Tag

LOCAL_CHANGE = "LOCAL_CHANGE = 1  # an uncommitted line"


def _facts(run_id: str, **over) -> dict:
    base = {"run_id": run_id, "name": "r", "params": {"optim.lr": "0.1", "seed": "0"}, "entry": BUILTIN,
            "commit": "abc", "python": "3.11.7", "patch": None, "packages": {"torch": "2.11", "numpy": "2.3"}}
    return {**base, **over}


# ----------------------------------------------------------------- the comparison, on dicts


def test_diff_params_lists_changed_keys_and_keys_only_in_one_run():
    a = {"optim.lr": "0.1", "seed": "0", "model.width": "64"}
    b = {"optim.lr": "0.05", "seed": "0", "model.act": "gelu"}
    assert diff_params(a, b) == ["model.act: gelu (only in B)", "model.width: 64 (only in A)", "optim.lr: 0.1 → 0.05"]
    assert diff_params(a, dict(a)) == []


def test_diff_packages_added_removed_changed_and_unrecorded():
    a = {"torch": "2.11", "numpy": "2.3", "scipy": "1.16"}
    b = {"torch": "2.12", "numpy": "2.3", "Pillow": "12.0"}
    assert diff_packages(a, b) == ["+ Pillow==12.0", "- scipy==1.16", "torch: 2.11 → 2.12"]
    assert diff_packages(a, dict(a)) == []
    assert diff_packages(None, b) == ["not recorded for A (no environment.txt)"]


def test_diff_code_shows_commit_and_a_diff_of_the_patches():
    assert diff_code(_facts("a"), _facts("b")) == []
    assert diff_code(_facts("a"), _facts("b", commit="def")) == ["commit: abc → def"]
    patch = "--- a/m.py\n+++ b/m.py\n@@ -1 +1,2 @@\n x = 0\n+y = 1\n"
    lines = diff_code(_facts("a"), _facts("b", patch=patch))
    assert lines[:3] == ["diff.patch: A has none, B has one", "--- A/code/diff.patch", "+++ B/code/diff.patch"]
    assert "++y = 1" in lines
    assert diff_code(_facts("a", patch=patch), _facts("b", patch=patch)) == []


def test_diff_runs_says_identical_for_sections_that_agree():
    lines = diff_runs(_facts("a"), _facts("b", params={"optim.lr": "0.2", "seed": "0"}))
    assert lines == ["A: a (r)", "B: b (r)", "params:", "  optim.lr: 0.1 → 0.2",
                     "code: identical (commit abc, no uncommitted changes)", "packages: identical (2)"]


# ----------------------------------------------------------------- what is recorded


def _git(folder: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=folder, env=env, check=True, capture_output=True, text=True).stdout


def test_git_state_of_clean_dirty_and_missing_repositories(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "m.py").write_text("x = 0\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "first")
    head = _git(repo, "rev-parse", "HEAD").strip()
    assert provenance.git_state(repo / "pkg") == (head, None)
    (repo / "pkg" / "m.py").write_text("x = 0\ny = 1\n")
    (repo / "pkg" / "new.py").write_text("untracked = True\n")
    commit, patch = provenance.git_state(repo / "pkg")
    assert commit == head and "+y = 1" in patch and "untracked" not in patch  # untracked files are left out
    assert provenance.git_state(tmp_path) == (None, None)  # not a repository
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no git at all
    assert provenance.git_state(repo / "pkg") == (None, None)


def test_environment_text_is_sorted_and_parses_back():
    text = provenance.environment_text()
    lines = text.splitlines()
    assert lines == sorted(lines, key=lambda line: canonicalize_name(line.partition("==")[0]))
    packages = provenance.parse_environment(text)
    assert len(packages) == len(lines) and packages["mlflow"]
    assert provenance.source_folder(BUILTIN) == REPO / "experiments"


def test_a_module_outside_any_repository_records_no_commit(two_runs, tmp_path, monkeypatch):
    from orchestrator.store.tracking import TrackingStore

    (tmp_path / "mytrain.py").write_text("def main(config, run):\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    tracking = TrackingStore(two_runs[0])
    run_id = tracking.start_run(tracking.ensure_experiment("prov"), run_name="r", params={"lr": "0.1"}, tags={})
    provenance.record(tracking, run_id, "mytrain:main")
    facts = provenance.read_provenance(tracking, run_id)
    assert (facts["entry"], facts["commit"], facts["patch"]) == ("mytrain:main", provenance.NO_COMMIT, None)
    assert facts["python"] == ".".join(map(str, sys.version_info[:3])) and facts["packages"]["mlflow"]
    assert Tag.GIT_SOURCE not in tracking.get_run(run_id).data.tags


def test_diff_of_a_run_that_does_not_exist_exits_2(two_runs):
    uri, run_a, _, _ = two_runs
    run_id = run_a.info.run_id
    for args, missing in (((run_id, "0123abcd"), "0123abcd"), (("not-an-id", run_id), "not-an-id")):
        proc = invoke("diff", *args, "--tracking-uri", uri)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and missing in proc.stderr


# ----------------------------------------------------------------- two real runs


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """``orch run`` from two copies of this repository at one commit: A clean with optim.lr=0.1,
    B with one uncommitted line and optim.lr=0.05 (both at once: each is mostly imports)."""
    tmp = tmp_path_factory.mktemp("prov")
    a, b = tmp / "a", tmp / "b"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("orchestrator", "experiments", "models"):
        shutil.copytree(REPO / package, a / package, ignore=ignore)
    _git(a, "init", "-q")
    _git(a, "add", ".")
    _git(a, "commit", "-q", "-m", "the code")
    _git(tmp, "clone", "-q", str(a), str(b))
    with open(b / "experiments" / "study.py", "a") as study:
        study.write(f"{LOCAL_CHANGE}\n")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    procs = [subprocess.Popen([sys.executable, "-m", "orchestrator", "run", "-q", "--run-name", name,
                               "--set", "train.max_epochs=1", "--set", "model.depth_n=1", "--set", f"optim.lr={lr}"],
                              cwd=tmp, env={**os.environ, "PYTHONPATH": str(code), "MLFLOW_TRACKING_URI": uri,
                                            "ORCH_SYSTEM_METRICS_SECONDS": "0"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, code, lr in (("a", a, "0.1"), ("b", b, "0.05"))]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    runs = {r.info.run_name: r for r in all_runs(uri)}
    return uri, runs["a"], runs["b"], _git(a, "rev-parse", "HEAD").strip()


def test_every_run_records_its_provenance(two_runs):
    from mlflow.tracking import MlflowClient

    uri, run_a, run_b, head = two_runs
    client = MlflowClient(tracking_uri=uri)
    for run in (run_a, run_b):
        tags = run.data.tags
        assert (tags[Tag.ENTRY], tags[Tag.GIT_COMMIT], tags[Tag.GIT_SOURCE]) == (BUILTIN, head, head)
        assert tags[Tag.PYTHON_VERSION] == ".".join(map(str, sys.version_info[:3]))
        assert Artifact.ENVIRONMENT in {f.path for f in client.list_artifacts(run.info.run_id)}
    assert not client.list_artifacts(run_a.info.run_id, "code")
    patch = Path(client.download_artifacts(run_b.info.run_id, Artifact.CODE_DIFF)).read_text()
    assert f"+{LOCAL_CHANGE}" in patch


def test_orch_diff_shows_the_one_parameter_and_the_one_line(two_runs):
    uri, run_a, run_b, _ = two_runs
    proc = invoke("diff", run_a.info.run_id[:8], run_b.info.run_id, "--tracking-uri", uri)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[2:4] == ["params:", "  optim.lr: 0.1 → 0.05"]
    code = lines[lines.index("code:") + 1:lines.index(next(line for line in lines if line.startswith("packages")))]
    assert code[:3] == ["  diff.patch: A has none, B has one", "  --- A/code/diff.patch", "  +++ B/code/diff.patch"]
    added_code = [line for line in code[3:] if line.startswith("  ++") and not line.startswith("  +++")]
    assert added_code == [f"  ++{LOCAL_CHANGE}"]  # the patch adds exactly that line; same commit: no commit line
    assert lines[-1].startswith("packages: identical (")
