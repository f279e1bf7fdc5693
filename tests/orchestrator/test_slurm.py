"""`orch sweep --launcher slurm` on a real one-node Slurm cluster (slurmctld, slurmd, munge).

The cluster (tests/slurm_cluster.py, conftest's ``cluster``) is built once per session in a
temporary folder and torn down afterwards; without root or Slurm's binaries these tests are
skipped with the reason. The compute node is this machine, so a SQLite store in the test's folder is
reachable from the tasks: the tests say so with --store-is-shared (the refusal itself
is tested without it). A store that tasks are writing is read with sqlite3 ``mode=ro``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

import slurm_cluster
from conftest import RESUME_BASE, TINY_BASE, invoke, new_database, orch, results, ro_rows, write_grid
from orchestrator.cli.main import cli
from orchestrator.grid.load import load_grid
from orchestrator.store.schema import Kind, Status, Tag

SHARED = "--store-is-shared"


def sweep_jobs(c: slurm_cluster.Cluster, sweep_id: str) -> list[str]:
    """The sweep's jobs still in squeue."""
    return [line for line in c.squeue() if line.split()[2].startswith(f"orch-{sweep_id}")]


def wait_until_no_jobs(c: slurm_cluster.Cluster, sweep_id: str, timeout: float = 400) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not sweep_jobs(c, sweep_id):
            return
        time.sleep(1)
    pytest.fail(f"jobs of sweep {sweep_id} still in squeue after {timeout} s: {c.squeue()}")


def point_runs(uri: str, sweep_id: str):
    c = MlflowClient(tracking_uri=uri)
    ids = [e.experiment_id for e in c.search_experiments()]
    runs = c.search_runs(ids, filter_string=f"tags.`orch.sweep` = '{sweep_id}'", max_results=1000)
    return [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.POINT]


def parent_run(uri: str, sweep_id: str):
    c = MlflowClient(tracking_uri=uri)
    ids = [e.experiment_id for e in c.search_experiments()]
    (parent,) = [r for r in c.search_runs(ids, filter_string=f"tags.`orch.sweep` = '{sweep_id}'")
                 if r.data.tags.get(Tag.KIND) == Kind.SWEEP]
    return parent


def task_logs(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted((folder / "slurm-logs").glob("*.out")))


def reference_sweep(grid: Path, folder: Path, *sets: str) -> subprocess.Popen:
    """The grid's points (``--set`` narrows them) uninterrupted in ``folder``, here, with one torch
    thread per point as in a one-core task; to compare a resumed point with."""
    folder.mkdir()
    overrides = [arg for value in sets for arg in ("--set", value)]
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "sweep", str(grid), *overrides, "--workers", str(os.cpu_count() or 1),
         "--quiet", "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}"],
        cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def scancel_at_epoch(cluster: slurm_cluster.Cluster, db: Path, run_key: str, *scancel: str, epoch: int = 2,
                     timeout: float = 400) -> str | None:
    """Once the point ``run_key`` runs with a checkpoint of ``epoch`` epochs or more, ``scancel
    [SCANCEL] JOB`` its task; the run id it stopped, or None if it never got there."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for run_id, status, epochs, job in ro_rows(
                db, "SELECT r.run_uuid, r.status, (SELECT value FROM tags c WHERE c.run_uuid = r.run_uuid "
                    "AND c.key = ?), (SELECT value FROM tags j WHERE j.run_uuid = r.run_uuid AND j.key = ?) FROM runs r "
                    "JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = ? AND t.value = ?",
                (Tag.CHECKPOINT_STEP, Tag.SLURM_JOB, Tag.RUN_KEY, run_key)):
            if status == Status.RUNNING and int(epochs or 0) >= epoch:
                cluster.run("scancel", *scancel, job)
                return run_id
        time.sleep(0.2)
    return None


def wait_restarting_requeued(cluster: slurm_cluster.Cluster, sweep_id: str, folder: Path, timeout: float = 600):
    """Until the sweep has no job in squeue, start each requeued (PENDING) job at once.

    Slurm holds a requeued job for two minutes (BeginTime); the tests do not wait that out. A
    start made under half a second after the requeue was killed by Slurm ("Job credential
    revoked": slurmd still held the revoked credential of the start before), so a job is
    restarted only once it has been seen pending for 2 s."""
    deadline = time.time() + timeout
    pending_since: dict[str, float] = {}
    while time.time() < deadline:
        jobs = sweep_jobs(cluster, sweep_id)
        if not jobs:
            return
        for job in jobs:
            job_id, state = job.split()[:2]
            if state == "PENDING":
                if time.time() - pending_since.setdefault(job_id, time.time()) >= 2:
                    cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now", check=False)
                    pending_since.pop(job_id)
            else:
                pending_since.pop(job_id, None)
        time.sleep(2)
    pytest.fail(f"still queued: {cluster.squeue()}\n{task_logs(folder)[-3000:]}")


# --------------------------------------------------------------------------- acceptance 1


def test_four_points_with_wait_finish_under_one_parent_summarized_once(cluster, tmp_path):
    grid = write_grid(tmp_path / "g.yaml", "slurm-wait", {"model.norm": ["bn", "gn"]}, seeds=(0, 1))
    spec = load_grid(grid)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = orch("sweep", str(grid), "--launcher", "slurm", "--wait", SHARED, "--tracking-uri", uri, "--slurm", "time=10",
                cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:] + task_logs(tmp_path)[-3000:]
    assert "Traceback" not in proc.stderr
    runs = point_runs(uri, spec.sweep_id)
    assert len(runs) == 4 and all(r.info.status == Status.FINISHED for r in runs)
    assert sorted(r.data.tags[Tag.RUN_KEY] for r in runs) == sorted(r.run_key for r in spec.runs)
    jobs = {r.data.tags[Tag.SLURM_JOB] for r in runs}
    assert len(jobs) == 4 and all("_" in j for j in jobs)  # one array task per point
    parent = parent_run(uri, spec.sweep_id)
    assert parent.info.status == Status.FINISHED
    assert all(r.data.tags[Tag.PARENT_RUN_ID] == parent.info.run_id for r in runs)
    assert "summary.csv" in {a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(parent.info.run_id)}
    assert not sweep_jobs(cluster, spec.sweep_id)
    closings = (task_logs(tmp_path) + proc.stderr).count("closed FINISHED")
    assert closings == 1, "the summary is written exactly once"
    assert parent.data.tags[Tag.SUMMARIZED_BY].startswith("Slurm task")  # the last task to end

    status = invoke("status", "--tracking-uri", uri, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    for j in jobs:
        assert j in status.stdout

    again = orch("sweep", str(grid), "--launcher", "slurm", SHARED, "--tracking-uri", uri, cwd=tmp_path)
    assert again.returncode == 0 and "all 4 points are finished; nothing submitted" in again.stderr
    assert not sweep_jobs(cluster, spec.sweep_id)


# --------------------------------------------------------------------------- acceptance 3


def test_scancel_mid_point_then_rerun_submits_only_it_and_resumes_exactly(cluster, tmp_path):
    grid = write_grid(tmp_path / "g.yaml", "slurm-cancel", {"model.norm": ["bn", "gn"]}, base=RESUME_BASE)
    spec = load_grid(grid)
    bn = next(r for r in spec.runs if r.point["model.norm"] == "bn")
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    ref_dir = tmp_path / "reference"
    reference = reference_sweep(grid, ref_dir, "model.norm=bn")

    sub = orch("sweep", str(grid), "--launcher", "slurm", SHARED, "--tracking-uri", uri, cwd=tmp_path)
    assert sub.returncode == 0, sub.stderr
    killed = scancel_at_epoch(cluster, db, bn.run_key)
    assert killed, f"the bn point never reached epoch 2: {task_logs(tmp_path)[-3000:]}"
    wait_until_no_jobs(cluster, spec.sweep_id)

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(killed)
    assert run.info.status == Status.KILLED
    assert run.data.tags[Tag.FAILURE_REASON].startswith("preempted (SIGTERM)")
    assert Tag.CHECKPOINT in run.data.tags
    assert parent_run(uri, spec.sweep_id).info.status == Status.FAILED  # closed with a point missing

    rerun = orch("sweep", str(grid), "--launcher", "slurm", "--wait", SHARED, "--tracking-uri", uri, cwd=tmp_path,
                 timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:] + task_logs(tmp_path)[-3000:]
    assert "submitted 1 point(s)" in rerun.stderr
    _, ref_err = reference.communicate(timeout=600)
    assert reference.returncode == 0, ref_err
    (ref,) = [r for r in point_runs(f"sqlite:///{ref_dir / 'mlflow.db'}", load_grid(grid, ["model.norm=bn"]).sweep_id)]

    runs = point_runs(uri, spec.sweep_id)
    finished = [r for r in runs if r.info.status == Status.FINISHED]
    assert sorted(r.data.tags[Tag.RUN_KEY] for r in finished) == sorted(r.run_key for r in spec.runs)
    (resumed,) = [r for r in finished if r.data.tags.get(Tag.RESUMED_FROM) == killed]
    assert int(resumed.data.tags[Tag.RESUMED_STEP]) >= 2
    assert results(resumed) == results(ref)
    assert parent_run(uri, spec.sweep_id).info.status == Status.FINISHED


# --------------------------------------------------------------------------- scancel and double submission


def test_scancel_of_the_whole_array_ends_every_run_and_the_last_task_closes_the_sweep(cluster, tmp_path):
    """`scancel ARRAY` mid-point: each started point checkpoints and ends KILLED, and the last task
    to end closes the parent FAILED. (A rerun then resumes them: as after one task's scancel,
    tested above.)"""
    grid = write_grid(tmp_path / "g.yaml", "slurm-cancel-array", {"model.norm": ["bn", "gn"]}, base=RESUME_BASE)
    spec = load_grid(grid)
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    sub = orch("sweep", str(grid), "--launcher", "slurm", SHARED, "--tracking-uri", uri, cwd=tmp_path)
    assert sub.returncode == 0, sub.stderr
    array = next(line.split()[0].split("_")[0] for line in sweep_jobs(cluster, spec.sweep_id)
                 if line.split()[2] == f"orch-{spec.sweep_id}")
    deadline = time.time() + 400
    while time.time() < deadline and not ro_rows(
            db, "SELECT 1 FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = ? WHERE r.status = ?",
            (Tag.CHECKPOINT_STEP, Status.RUNNING)):
        time.sleep(0.2)
    assert time.time() < deadline, f"no point reached a checkpoint: {task_logs(tmp_path)[-3000:]}"
    cluster.run("scancel", array)
    wait_until_no_jobs(cluster, spec.sweep_id)

    runs = point_runs(uri, spec.sweep_id)
    assert runs and all(r.info.status == Status.KILLED for r in runs), [r.info.status for r in runs]
    assert all(r.data.tags[Tag.FAILURE_REASON].startswith("preempted (SIGTERM)") for r in runs)
    assert any(Tag.CHECKPOINT in r.data.tags for r in runs)
    parent = parent_run(uri, spec.sweep_id)
    assert parent.info.status == Status.FAILED, task_logs(tmp_path)[-3000:]
    assert parent.data.tags[Tag.SUMMARIZED_BY].startswith("Slurm task")
    assert "rerun the sweep" in parent.data.tags[Tag.FAILURE_REASON]
    assert (task_logs(tmp_path)).count("closed FAILED") == 1


def test_a_second_submission_refuses_or_waits_and_a_queued_task_keeps_the_sweep_open(cluster, tmp_path):
    """Two hostile cases on one held one-point sweep. (1) While a submission holds the sweep
    lock, another exits 2 naming it, or with --wait waits and then submits; one right after
    submits nothing. (2) While its task is queued, `orch status` does not close the sweep; the
    task, the sweep's last job, closes it as it ends."""
    from orchestrator.store import locks

    grid = write_grid(tmp_path / "g.yaml", "slurm-twice", {"model.norm": ["bn"]})
    spec = load_grid(grid)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()
    args = ("sweep", str(grid), "--launcher", "slurm", SHARED, "--tracking-uri", uri)
    log = tmp_path / "waiting.err"
    with locks.hold(uri, spec.name):  # stands for a submission under way
        with open(log, "w") as err:  # held: the task stays queued while the test looks
            waiting = subprocess.Popen([sys.executable, "-m", "orchestrator", *args, "--slurm", "hold", "--wait"],
                                       cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err, text=True)
        refused = invoke(*args, cwd=tmp_path)
        assert refused.returncode == 2, refused.stderr
        assert f"pid {os.getpid()} on host" in refused.stderr and "Traceback" not in refused.stderr
        deadline = time.time() + 120
        while "waiting for" not in log.read_text() and waiting.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert waiting.poll() is None and "waiting for" in log.read_text(), log.read_text()
        assert not sweep_jobs(cluster, spec.sweep_id)
    deadline = time.time() + 120
    while not sweep_jobs(cluster, spec.sweep_id) and waiting.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    (task,) = [line.split()[0] for line in sweep_jobs(cluster, spec.sweep_id)]
    again = invoke(*args, cwd=tmp_path)
    assert again.returncode == 0 and "nothing submitted" in again.stderr, again.stderr

    status = invoke("status", "--tracking-uri", uri, cwd=tmp_path)
    assert status.returncode == 0 and "still queued or running" in status.stderr, status.stderr
    assert parent_run(uri, spec.sweep_id).info.status == Status.RUNNING

    cluster.run("scontrol", "release", task.split("_")[0])
    assert waiting.wait(timeout=600) == 0, log.read_text()[-3000:] + task_logs(tmp_path)[-3000:]
    wait_until_no_jobs(cluster, spec.sweep_id)
    (run,) = point_runs(uri, spec.sweep_id)
    assert run.info.status == Status.FINISHED
    parent = parent_run(uri, spec.sweep_id)
    assert parent.info.status == Status.FINISHED, task_logs(tmp_path)[-3000:]
    assert parent.data.tags[Tag.SUMMARIZED_BY] == f"Slurm task {run.data.tags[Tag.SLURM_JOB]}"
    assert parent.data.tags[Tag.SLURM_JOBS] == task.split("_")[0]  # one array, no other job


def test_a_squeue_that_cannot_be_asked_is_an_error_not_an_empty_queue(tmp_path, monkeypatch):
    """An unanswered squeue read as "no live job" would submit, close or take over points that run."""
    from orchestrator.launch import slurm

    fake = tmp_path / "squeue"
    fake.write_bytes(b"\x00not a program")  # cannot be run: the same path as one that times out
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(slurm.SlurmError, match="squeue did not answer"):
        slurm.live_jobs("abc")
    with pytest.raises(slurm.SlurmError, match="squeue did not answer"):
        slurm.is_live("12")


# --------------------------------------------------------------------------- acceptance 2, 4


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_time_limit_warning_requeues_the_task_and_a_submission_returns_at_once(cluster, tmp_path):
    """Without --wait the command returns within seconds and the task closes the sweep as it ends.
    The time-limit warning makes the running point checkpoint and the task requeue itself; its
    next start resumes the point and finishes it, bitwise as an uninterrupted run.

    The warning is what ``--signal=B:USR1@N`` makes Slurm send: SIGUSR1 to the batch shell.
    The test sends it the same way (``scancel --signal=USR1 --batch``) once the point has a
    checkpoint, rather than through a short time limit: Slurm sends its warning at its next
    periodic check (every 30 s or so), up to a minute early, which on a limit of a minute or
    two is anywhere in a start, so the point's progress per start would be left to chance."""
    grid = write_grid(tmp_path / "g.yaml", "slurm-timelimit", {"model.norm": ["bn"]}, base=RESUME_BASE)
    spec = load_grid(grid)
    (point,) = spec.runs
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    ref_dir = tmp_path / "reference"
    reference = reference_sweep(grid, ref_dir)
    # An existing store, as a researcher's usually is: creating a fresh SQLite store's tables
    # alone takes MLflow seconds (12 s on a loaded 2-core machine), which is not what is timed here
    MlflowClient(tracking_uri=uri).search_experiments()
    sub = orch("sweep", str(grid), "--launcher", "slurm", SHARED, "--tracking-uri", uri, "--slurm", "time=30",
               cwd=tmp_path)
    assert sub.returncode == 0, sub.stderr
    assert sweep_jobs(cluster, spec.sweep_id), "the submission waited for its jobs"  # it returns in 3-11 s, by load
    assert "submitted 1 point(s) as Slurm job" in sub.stderr and "squeue -n" in sub.stderr
    # from here on no orch process runs on the submitting side: only Slurm's task
    warned = scancel_at_epoch(cluster, db, point.run_key, "--signal=USR1", "--batch")
    assert warned, f"the point never reached epoch 2: {task_logs(tmp_path)[-3000:]}"
    wait_restarting_requeued(cluster, spec.sweep_id, tmp_path)
    rows = ro_rows(db, "SELECT r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = ? "
                       "AND t.value = ?", (Tag.KIND, Kind.SWEEP))
    assert rows == [(Status.FINISHED,)], task_logs(tmp_path)[-3000:]  # closed by the task as it ended
    parent = parent_run(uri, spec.sweep_id)
    assert parent.data.tags[Tag.SUMMARIZED_BY].startswith("Slurm task")
    assert "summary.csv" in {a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(parent.info.run_id)}
    runs = point_runs(uri, spec.sweep_id)
    logs = task_logs(tmp_path)
    assert "task requeued" in logs, logs[-3000:]
    stopped = MlflowClient(tracking_uri=uri).get_run(warned)
    assert stopped.info.status == Status.KILLED
    assert stopped.data.tags[Tag.FAILURE_REASON].startswith("preempted (SIGUSR1)")
    (done,) = [r for r in runs if r.info.status == Status.FINISHED]
    assert int(done.data.tags[Tag.SLURM_RESTARTS]) >= 1  # on a requeued start of the same task
    assert done.data.tags[Tag.RESUMED_FROM] == warned
    _, ref_err = reference.communicate(timeout=600)
    assert reference.returncode == 0, ref_err
    (ref,) = point_runs(f"sqlite:///{ref_dir / 'mlflow.db'}", spec.sweep_id)
    assert results(done) == results(ref)


# --------------------------------------------------------------------------- acceptance 5


def test_queue_mode_two_worker_tasks_run_six_points_once(cluster, postgres_url, tmp_path):
    storage = new_database(postgres_url)
    grid = write_grid(tmp_path / "g.yaml", f"slurm-queue-{os.getpid()}", {"model.norm": ["bn", "gn", "ln"]},
                      seeds=(0, 1), base={**TINY_BASE, "train": {"max_epochs": 1, "patience": 1}})
    spec = load_grid(grid)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the node is this machine; PostgreSQL hands out the points
    proc = orch("sweep", str(grid), "--launcher", "slurm", "--storage", storage, "--slurm", "array-parallelism=2", SHARED,
                "--tracking-uri", uri, "--wait", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:] + task_logs(tmp_path)[-3000:]
    runs = point_runs(uri, spec.sweep_id)
    keys = [r.data.tags[Tag.RUN_KEY] for r in runs]
    assert sorted(keys) == sorted(r.run_key for r in spec.runs)  # each point exactly once
    assert all(r.info.status == Status.FINISHED for r in runs)
    assert len({r.data.tags[Tag.SLURM_JOB] for r in runs}) <= 2
    assert parent_run(uri, spec.sweep_id).info.status == Status.FINISHED
    assert not sweep_jobs(cluster, spec.sweep_id)


# --------------------------------------------------------------------------- acceptance 6


def test_dry_run_prints_the_job_script_and_submits_nothing(cluster, tmp_path):
    grid = write_grid(tmp_path / "g.yaml", "slurm-dry", {"model.norm": ["bn", "gn"]}, seeds=(0, 1))
    before = cluster.squeue()
    result = CliRunner().invoke(cli, ["sweep", str(grid), "--launcher", "slurm", "--dry-run", SHARED, "--slurm",
                                      "time=1:00:00", "--slurm", "array-parallelism=2", "--slurm", "account=lab",
                                      "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    assert result.exit_code == 0, result.output
    script = result.stdout
    assert script.startswith("#!/bin/bash\n")
    for line in ("#SBATCH --array=0-3%2", "#SBATCH --time=1:00:00", "#SBATCH --signal=B:USR1@120",
                 "#SBATCH --requeue", "#SBATCH --account=lab", "-m orchestrator.launch.slurm_task"):
        assert line in script
    assert cluster.squeue() == before
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("args, needle", [
    (["--slurm", "partition=nosuch"], "no such partition"),
    (["--slurm", "time=1:2:3:4"], "is not a Slurm time limit"),
    (["--slurm", "time=soon"], "is not a Slurm time limit"),
    (["--slurm", "=x"], "give an sbatch option as KEY=VALUE"),
    (["--slurm", "no-such-option=1"], "Slurm would refuse the job"),
    (["--slurm", "gpus-per-task=1"], "Slurm would refuse the job"),  # the test node has no GPU
    (["--slurm", "mem=99999G"], "Slurm would refuse the job"),
    (["--tracking-uri", "sqlite:////tmp/orch-not-shared/mlflow.db"], "which the compute nodes do not share"),
    (["--tracking-uri", "http://127.0.0.1:1"], "loopback address"),
    (["--storage", "sqlite:////srv/q.db"], "needs a PostgreSQL queue"),
])
def test_bad_input_exits_2_before_anything_is_submitted(cluster, tmp_path, args, needle):
    grid = write_grid(tmp_path / "g.yaml", "slurm-bad", {"model.norm": ["bn"]})
    before = cluster.squeue()
    shared = [] if "--tracking-uri" in args else [SHARED, "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    result = CliRunner().invoke(cli, ["sweep", str(grid), "--launcher", "slurm", *shared, *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output
    assert cluster.squeue() == before
    assert not (tmp_path / "m.db").exists()


def test_no_sbatch_on_path_exits_2(tmp_path):
    grid = write_grid(tmp_path / "g.yaml", "slurm-nosbatch", {"model.norm": ["bn"]})
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = invoke("sweep", str(grid), "--launcher", "slurm", SHARED, "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
                env={"PATH": str(empty)}, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "no sbatch/squeue on PATH" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "m.db").exists()


def test_slurm_options_without_the_slurm_launcher_are_refused(tmp_path):
    grid = write_grid(tmp_path / "g.yaml", "slurm-opts", {"model.norm": ["bn"]})
    result = CliRunner().invoke(cli, ["sweep", str(grid), "--slurm", "partition=gpu", "--tracking-uri",
                                      f"sqlite:///{tmp_path / 'm.db'}"])
    assert result.exit_code == 2 and "only apply with --launcher slurm" in result.output


# --------------------------------------------------------------------------- no cluster needed


@pytest.mark.parametrize("value, minutes", [("90", 90), ("5:30", 5.5), ("1:30:00", 90), ("2-0", 2880),
                                            ("1-2:3", 1563), ("1-0:0:30", 1440.5), ("infinite", None)])
def test_slurm_time_formats(value, minutes):
    from orchestrator.launch.slurm import parse_time

    assert parse_time(value) == minutes


def test_task_tags_name_the_array_task():
    from orchestrator.execute.job import slurm_tags

    tags = slurm_tags({"SLURM_JOB_ID": "17", "SLURM_ARRAY_JOB_ID": "12", "SLURM_ARRAY_TASK_ID": "3",
                      "SLURM_RESTART_COUNT": "2"})
    assert tags == {Tag.SLURM_JOB_ID: "17", Tag.SLURM_JOB: "12_3", Tag.SLURM_ARRAY_JOB_ID: "12",
                    Tag.SLURM_ARRAY_TASK_ID: "3", Tag.SLURM_RESTARTS: "2"}
    assert slurm_tags({}) == {}


def test_slurm_launcher_stays_out_of_heavy_imports(tmp_path):
    grid = write_grid(tmp_path / "g.yaml", "slurm-light", {"model.norm": ["bn"]})
    code = ("import sys; from orchestrator.cli.main import cli\n"
            "try:\n"
            f"    cli(['sweep', {str(grid)!r}, '--launcher', 'slurm', '--dry-run', '--store-is-shared'])\n"
            "except SystemExit:\n"
            "    pass\n"
            "print(sorted(m for m in ('torch', 'mlflow', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stderr
