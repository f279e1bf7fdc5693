"""The scheduler over a real ListSource and real child processes, in about a second.

The children are a stand-in for ``python -m orchestrator.execute.point`` that speaks the same
protocol (the job as JSON on stdin, events as JSON lines on stdout, the exit code) but
trains nothing, so each starts in milliseconds instead of seconds of torch and mlflow
imports. What the real point process does is tested end to end in test_sweep.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from orchestrator.execute.display import PlainDisplay
from orchestrator.launch.queue import QueueSource
from orchestrator.execute.scheduler import Job, ListSource, PointSource, Scheduler, Slot, Task
from orchestrator.execute.slots import plan_slots

STAND_IN = r"""
import json, os, signal, sys, time
stop, busy = [], []
dies_on_stop = False


def on_signal(code):  # as the real point: a running one checkpoints and ends KILLED; an idle one exits
    def handler(*args):
        stop.append(code)
        if not busy or dies_on_stop:
            os._exit(code)
    return handler


signal.signal(signal.SIGTERM, on_signal(143))
signal.signal(signal.SIGINT, on_signal(130))
with open(os.environ["STAND_IN_PIDS"], "a") as fh:
    fh.write(f"{os.getpid()}\n")
limit, done = int(os.environ.get("ORCH_POINTS_PER_PROCESS", "50")), 0
for line in sys.stdin:  # an idle process waits here for its next job
    if not line.strip():
        break
    job = json.loads(line)
    busy.append(1)
    plan, jid, code = job["config"], job["job"], job["config"].get("code", 0)
    dies_on_stop = plan.get("dies_on_stop", False)  # a stop signal ends it without closing its run
    if plan.get("run_id"):
        print(json.dumps({"event": "started", "job": jid, "run_id": plan["run_id"]}), flush=True)
    if plan.get("crash"):
        print("stand-in crashes", file=sys.stderr, flush=True)
        os._exit(plan["crash"])
    if plan.get("signal"):
        os.kill(os.getpid(), plan["signal"])
    for epoch in range(1, plan.get("epochs", 1) + 1):
        print(json.dumps({"event": "step", "job": jid, "step": epoch}),
              flush=True)
        deadline = time.time() + plan.get("sleep", 0)
        while time.time() < deadline and not stop:
            time.sleep(0.01)
        if stop:
            code = stop[0]
            break
    print(f"stand-in point {jid} ends with {code}", file=sys.stderr, flush=True)
    busy.clear()
    done += 1
    retire = bool(stop) or done >= limit
    print(json.dumps({"event": "end", "job": jid, "code": code, "summary": {"pid": os.getpid()}, "retire": retire}),
          flush=True)
    if retire:
        sys.exit(stop[0] if stop else 0)
"""


class Recorder(PlainDisplay):
    """A quiet display that keeps the order of what happened."""

    def __init__(self, on_progress=None):
        super().__init__(quiet=True)
        self.log: list[tuple[str, str]] = []
        self.done: list[Task] = []
        self.on_progress = on_progress

    def started(self, task: Task) -> None:
        self.log.append(("start", f"{task.name}#{task.attempt}"))

    def progress(self, task: Task, event: dict) -> None:
        if self.on_progress:
            self.on_progress()

    def finished(self, task: Task) -> None:
        self.log.append(("done", task.name))
        self.done.append(task)

    def retrying(self, task: Task, reason: str) -> None:
        self.log.append(("retry", task.name))

    def failed(self, task: Task, reason: str) -> None:
        self.log.append(("failed", task.name))


def job(name: str, **plan) -> Job:
    return Job(name, plan, uri="sqlite:///unused.db", experiment_id="0", parent_run_id=None, tags={})


@pytest.fixture
def pids(tmp_path, monkeypatch) -> Path:
    """A file where every stand-in process writes its pid as it starts."""
    path = tmp_path / "pids"
    path.touch()
    monkeypatch.setenv("STAND_IN_PIDS", str(path))
    return path


def scheduler(tmp_path: Path, n_slots: int, display: Recorder, **kwargs) -> Scheduler:
    slots = [Slot(i, None, 1) for i in range(n_slots)]
    return Scheduler(slots=slots, display=display, log_dir=tmp_path / "logs",
                     point_command=[sys.executable, "-c", STAND_IN], **kwargs)


def started_pids(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()]


@pytest.mark.parametrize("per_process, n_processes", [("50", 2), ("2", 3), ("1", 5)])
def test_a_slot_runs_its_points_in_one_process_until_it_retires(tmp_path, pids, monkeypatch, per_process,
                                                                n_processes):
    monkeypatch.setenv("ORCH_POINTS_PER_PROCESS", per_process)
    display = Recorder()
    names = [f"p{i}" for i in range(5)]
    outcome = scheduler(tmp_path, 2, display).run(ListSource([job(n, sleep=0.05) for n in names], max_retries=0))
    assert sorted(outcome.finished) == names and not outcome.failed and not outcome.skipped
    assert not outcome.interrupted
    every = started_pids(pids)
    assert len(every) == n_processes and {t.summary["pid"] for t in display.done} == set(every)
    for pid in every:  # every child has exited and been reaped
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not (tmp_path / "logs").exists()  # nothing failed: no log is kept


def wait_for_pids(path: Path, n: int, timeout: float = 30) -> list[int]:
    deadline = time.time() + timeout
    while len(started_pids(path)) < n:
        assert time.time() < deadline, f"{len(started_pids(path))} of {n} processes started"
        time.sleep(0.02)
    return started_pids(path)


def test_a_scheduler_that_keeps_its_processes_reuses_them_in_its_next_run(tmp_path, pids):
    """Rounds (a sweep's added seeds) run in the same processes; close() ends them."""
    sched = scheduler(tmp_path, 2, Recorder(), keep_processes=True)
    first = sched.run(ListSource([job("a"), job("b")], max_retries=0))
    kept = started_pids(pids)
    assert sorted(first.finished) == ["a", "b"] and len(kept) == 2
    for pid in kept:
        os.kill(pid, 0)  # still there, idle, between the runs
    second = sched.run(ListSource([job("c"), job("d")], max_retries=0))
    assert sorted(second.finished) == ["c", "d"] and started_pids(pids) == kept
    sched.close()
    for pid in kept:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not (tmp_path / "logs").exists()


def test_failed_point_is_retried_first_then_recorded_with_its_log(tmp_path, pids):
    display = Recorder()
    source = ListSource([job("bad", crash=3), job("good")], max_retries=2)
    outcome = scheduler(tmp_path, 1, display).run(source)
    assert display.log == [("start", "bad#1"), ("retry", "bad"), ("start", "bad#2"), ("retry", "bad"),
                           ("start", "bad#3"), ("failed", "bad"), ("start", "good#1"), ("done", "good")]
    reason = outcome.failed["bad"]
    assert "process exited with code 3 before its MLflow run started" in reason
    assert "stand-in crashes" in reason  # the last line of the point's log
    assert outcome.finished == ["good"]
    logs = sorted(p.name for p in (tmp_path / "logs").glob("*.log"))
    assert logs == ["bad-attempt1.log", "bad-attempt2.log", "bad-attempt3.log"]
    assert (tmp_path / "logs" / "bad-attempt1.log").read_text() == "stand-in crashes\n"  # only its own part


def test_a_crash_fails_only_the_running_point_and_the_slot_starts_a_fresh_process(tmp_path, pids):
    display = Recorder()
    source = ListSource([job("a"), job("crash", crash=9), job("b"), job("c")], max_retries=0)
    outcome = scheduler(tmp_path, 1, display).run(source)
    assert outcome.finished == ["a", "b", "c"] and list(outcome.failed) == ["crash"]
    pid = {t.name: t.summary["pid"] for t in display.done}
    assert pid["b"] == pid["c"] != pid["a"]  # a fresh process after the crash, then kept
    assert len(started_pids(pids)) == 2


def test_a_failed_point_leaves_its_process_running_for_the_next(tmp_path, pids):
    display = Recorder()
    outcome = scheduler(tmp_path, 1, display).run(ListSource([job("bad", code=1), job("good")], max_retries=0))
    reason = outcome.failed["bad"]
    assert reason == f"training raised an exception; log: {tmp_path / 'logs' / 'bad-attempt1.log'}"
    assert outcome.finished == ["good"]
    assert len(started_pids(pids)) == 1


def test_fail_fast_starts_nothing_after_the_first_failure(tmp_path, pids):
    display = Recorder()
    source = ListSource([job("bad", code=1), job("a"), job("b")], max_retries=0)
    outcome = scheduler(tmp_path, 1, display, fail_fast=True).run(source)
    assert list(outcome.failed) == ["bad"] and outcome.skipped == ["a", "b"] and not outcome.finished


def test_a_point_killed_by_a_signal_is_reported_as_such(tmp_path, pids):
    outcome = scheduler(tmp_path, 1, Recorder()).run(ListSource([job("x", signal=signal.SIGKILL)], max_retries=0))
    assert outcome.failed["x"].startswith("process died (SIGKILL)")


def test_ctrl_c_stops_running_points_and_abandons_them(tmp_path, pids):
    abandoned: list[str] = []

    class Source(ListSource):
        def abandon(self, task: Task) -> None:
            abandoned.append(task.name)

    display = Recorder(on_progress=lambda: os.kill(os.getpid(), signal.SIGINT))
    outcome = scheduler(tmp_path, 1, display).run(Source([job("long", epochs=2, sleep=60)], max_retries=0))
    assert outcome.interrupted and not outcome.failed and not outcome.finished
    assert abandoned == ["long"]
    # the child was stopped, not waited for (120 s); a liveness bound, 30x the ~1 s a stop takes on a loaded VM
    assert outcome.seconds < 30


@pytest.mark.parametrize("signum, reason", [(signal.SIGTERM, "preempted (SIGTERM)"),
                                             (signal.SIGINT, "interrupted (SIGINT)")])
def test_a_run_its_stopped_process_left_open_is_closed_with_the_signal(tmp_path, pids, store, signum, reason):
    """A point process that ends on the stop signal without closing its run (killed after
    the grace, or dead): the scheduler closes the run KILLED with the signal's reason."""
    from orchestrator.store.tracking import TrackingStore

    tracking = TrackingStore(store)
    run_id = tracking.start_run(tracking.ensure_experiment("e"), run_name="p", params={}, tags={})
    point = Job("p", {"run_id": run_id, "dies_on_stop": True, "epochs": 2, "sleep": 60}, uri=store,
                experiment_id="0", parent_run_id=None, tags={})
    display = Recorder(on_progress=lambda: os.kill(os.getpid(), signum))
    outcome = scheduler(tmp_path, 1, display).run(ListSource([point], max_retries=0))
    assert outcome.interrupted and outcome.signal == signum
    run = tracking.get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["orch.failure_reason"].startswith(reason)


def test_a_point_that_lost_its_claim_is_neither_finished_nor_failed(tmp_path, pids):
    """A point process that reports LOST_CLAIM (another process took its point over): the
    source hears ``lost``; no retry, no failure, the scheduler goes on."""
    lost: list[str] = []

    class Source(ListSource):
        def lost(self, task: Task, reason: str) -> None:
            lost.append(task.name)

    outcome = scheduler(tmp_path, 1, Recorder()).run(Source([job("taken", code=3), job("next")], max_retries=1))
    assert lost == ["taken"] and list(outcome.lost) == ["taken"]
    assert outcome.finished == ["next"] and not outcome.failed


def test_a_queue_workers_progress_counts_without_a_total(capsys):
    """A queue does not know how many points will come: the count says what ended, not ``[1/0]``."""
    display = PlainDisplay()
    display.start(None, [Slot(0, None, 1)])
    task = Task(job("a"), slot=Slot(0, None, 1), started=time.time())
    display.finished(task)
    display.failed(Task(job("b"), slot=Slot(0, None, 1)), "boom")
    err = capsys.readouterr().err
    assert "running points from the queue on 1 slot(s)" in err
    assert "  done    a  [1 ended]" in err and "  FAILED  b  [2 ended]: boom" in err and "/0]" not in err


def test_idle_scheduler_polls_until_stopped(tmp_path, pids):
    """A worker with --wait: idle, it asks ``on_idle`` and claims again, until Ctrl-C."""
    source = ListSource([], max_retries=0)
    calls: list[int] = []

    def on_idle() -> bool:
        calls.append(1)
        if len(calls) == 1:
            source.pending.append(Task(job("late")))  # queued while the worker waited
            return True
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return False

    outcome = scheduler(tmp_path, 1, Recorder(), idle_poll=0.01, on_idle=on_idle).run(source)
    assert outcome.finished == ["late"] and outcome.interrupted and len(calls) == 2


def test_slots_are_gpus_times_runs_per_gpu_or_cpu_workers():
    slots = plan_slots(1, ["0", "1"], 2, "auto")
    assert [(s.index, s.gpu, s.label) for s in slots] == [(0, "0", "gpu0"), (1, "0", "gpu0"),
                                                          (2, "1", "gpu1"), (3, "1", "gpu1")]
    cpu = plan_slots(2, ["0"], 2, "cpu")
    assert [(s.gpu, s.label) for s in cpu] == [(None, "cpu0"), (None, "cpu1")]
    assert all(s.threads >= 1 for s in cpu)


def _threads_in(env: dict, *prefix: str, workers: int = 1, code: str = "") -> int:
    """A fresh interpreter's thread count per slot for ``workers`` CPU slots."""
    code = code or f"from orchestrator.execute.slots import plan_slots; print(plan_slots({workers}, None, 1, 'cpu')[0].threads)"
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "SLURM_JOB_ID", "SLURM_CPUS_ON_NODE")}
    out = subprocess.run([*prefix, sys.executable, "-c", code], env={**clean, **env}, cwd=REPO,
                         capture_output=True, text=True, check=True)
    return int(out.stdout)


def test_cpu_threads_follow_the_cpus_this_process_may_use():
    """Slots divide the CPUs of the affinity mask (taskset), narrowed to a Slurm job's allocation;
    OMP_NUM_THREADS, when set, is each slot's count (several workers sharing one machine)."""
    cpus = len(os.sched_getaffinity(0))
    assert _threads_in({}) == cpus
    assert _threads_in({}, workers=cpus) == 1
    assert _threads_in({}, "taskset", "-c", "0") == 1  # pinned to one CPU: one thread, not os.cpu_count()
    assert _threads_in({"SLURM_JOB_ID": "7", "SLURM_CPUS_ON_NODE": "1"}) == 1
    assert _threads_in({"SLURM_CPUS_ON_NODE": "1"}) == cpus  # outside a job the variable is not Slurm's word
    assert _threads_in({"SLURM_JOB_ID": "7", "SLURM_CPUS_ON_NODE": "¹"}) == cpus  # not a count
    assert _threads_in({"OMP_NUM_THREADS": "3"}, workers=2) == 3
    assert _threads_in({"OMP_NUM_THREADS": " 2 "}, workers=cpus) == 2
    for odd in ("0", "abc", "²"):  # not a count: the usable CPUs decide
        assert _threads_in({"OMP_NUM_THREADS": odd}) == cpus


def test_a_slurm_tasks_points_share_the_cpus_slurm_gave_it():
    """A Slurm task's CPU slots divide what Slurm allocated on the node (and the affinity mask)
    among its points; the submitting shell's OMP_NUM_THREADS, passed on by --export=ALL, does
    not shrink them (a task forgets it first, array and queue mode alike)."""
    code = ("from orchestrator.launch.slurm_task import own_threads, task_slots; own_threads(); "
            "print(task_slots(2, 1, 'cpu')[1].threads)")
    cpus = len(os.sched_getaffinity(0))
    assert _threads_in({"SLURM_JOB_ID": "7", "SLURM_CPUS_ON_NODE": "64"}, code=code) == max(1, min(cpus, 64) // 2)
    assert _threads_in({"SLURM_JOB_ID": "7", "SLURM_CPUS_ON_NODE": "4"}, "taskset", "-c", "0", code=code) == 1
    assert _threads_in({"SLURM_JOB_ID": "7", "SLURM_CPUS_ON_NODE": "4", "OMP_NUM_THREADS": "5"},
                       code=code) == max(1, min(cpus, 4) // 2)


@pytest.mark.parametrize("source", [ListSource, QueueSource])
def test_sources_implement_the_whole_protocol(source):
    """Each source defines every method itself: none falls back to the protocol's empty stub."""
    methods = ("claim", "started", "finished", "failed", "abandon", "lost", "unstarted")
    assert PointSource in source.__mro__  # declared, not only matched by shape
    assert [m for m in methods if m not in vars(source)] == []
