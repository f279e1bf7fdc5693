"""Slurm, on the submitting side: options, checks, the job script, ``sbatch`` and ``squeue``.

The job script is plain ``sbatch`` (what ``--dry-run`` prints is what is submitted); a task is a
``python -m orchestrator.launch.slurm_task`` whose input is a heredoc in the script. Every job of a
sweep is named ``orch-<sweep id>``: reruns, ``orch status`` and tasks find each other by it.
Nothing here imports mlflow, torch or optuna.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence
from urllib.parse import urlsplit

from orchestrator.errors import UserError

WARN_SECONDS = 120  # the time-limit warning (SIGUSR1) comes this long before the limit
LIVE_STATES = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
               "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT")
NOT_SHARED = ("/tmp", "/var/tmp", "/dev/shm", "/run")  # node-local on every cluster we know of
SHARED_ENV = "ORCH_STORE_IS_SHARED"  # "1": the store is reachable from the compute nodes as given
COMMAND_TIMEOUT = 30  # seconds for sinfo, squeue and sbatch to answer
INPUT_END = "ORCH_TASK"  # the heredoc delimiter of the task's input in a job script


class SlurmError(UserError):
    """A Slurm option or the cluster cannot be used as given."""


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    time: str | None = None  # Slurm's time format, checked by parse_time
    array_parallelism: int | None = None  # tasks running at once (array mode); tasks (queue mode)
    extra: tuple[tuple[str, str], ...] = ()  # every other sbatch option (--slurm KEY=VALUE)
    runs_per_gpu: int = 1
    log_dir: str | None = None

    def minutes(self) -> float | None:
        return parse_time(self.time) if self.time else None


@dataclass(frozen=True)
class LiveJob:
    id: str  # as squeue shows it: "12_3" for array task 3 of job 12
    state: str


def parse_time(value: str) -> float | None:
    """Slurm's ``--time`` formats → minutes (None for ``infinite``/``unlimited``); else a SlurmError."""
    text = value.strip().lower()
    if text in ("infinite", "unlimited"):
        return None
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if m:
        days, *parts = m.groups()
        numbers = [int(p) for p in parts if p is not None]
        if days is not None:  # days-hours[:minutes[:seconds]]
            weights = (60, 1, 1 / 60)
        else:  # minutes, minutes:seconds, hours:minutes:seconds
            weights = ((1,), (1, 1 / 60), (60, 1, 1 / 60))[len(numbers) - 1]
        minutes = int(days or 0) * 1440 + sum(n * w for n, w in zip(numbers, weights))
        if minutes > 0:
            return minutes
    raise SlurmError(f"--slurm time={value} is not a Slurm time limit; use MINUTES, MINUTES:SECONDS, "
                     "HOURS:MINUTES:SECONDS, DAYS-HOURS, DAYS-HOURS:MINUTES or DAYS-HOURS:MINUTES:SECONDS "
                     "(e.g. time=90, time=1:30:00, time=2-00:00)")


def parse_extra(items: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """``--slurm KEY=VALUE`` items → (key, value) pairs; a bare flag (``--slurm exclusive``) has value ''."""
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not key or not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", key):
            raise SlurmError(f"--slurm {item!r}: give an sbatch option as KEY=VALUE, e.g. --slurm account=lab "
                             "or --slurm constraint=a100")
        if "\n" in value:
            raise SlurmError(f"--slurm {item!r}: the value cannot span lines")
        pairs.append((key, value.strip() if sep else ""))
    return tuple(pairs)


def _run(cmd: Sequence[str], what: str, **kw) -> subprocess.CompletedProcess:
    """Run a Slurm command; one that cannot be run or does not answer in time raises."""
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=COMMAND_TIMEOUT, **kw)
    except (OSError, subprocess.SubprocessError) as err:
        raise SlurmError(f"{cmd[0]} did not answer ({err}): {what}; try again when Slurm answers") from None


def check(options: SlurmOptions, uri: str, *, shared: bool, storage: str | None = None) -> None:
    """Every check before submission: sbatch present, partition known, time parses, store reachable."""
    options.minutes()
    if shutil.which("sbatch") is None or shutil.which("squeue") is None:
        raise SlurmError("--launcher slurm: no sbatch/squeue on PATH; run on a login node of the cluster "
                         "(or load its Slurm module), or drop --launcher slurm to run here")
    if options.partition is not None:
        out = _run(["sinfo", "-h", "-o", "%P"], "is the controller up? try `sinfo`")
        if out.returncode != 0:
            raise SlurmError(f"sinfo failed: {out.stderr.strip()[:300]}; is the controller reachable? try `sinfo`")
        known = [p.rstrip("*") for p in out.stdout.split()]
        if options.partition not in known:
            raise SlurmError(f"--slurm partition={options.partition}: no such partition; partitions: "
                             f"{', '.join(known) or 'none'} (see `sinfo`)")
    check_reachable_from_nodes(uri, shared)
    if storage and not shared and _is_loopback(urlsplit(storage).hostname):
        raise SlurmError(f"--storage {storage.split('@')[-1]}: a loopback address is unreachable from the compute "
                         f"nodes; use the database host's name; if they do reach it, add --store-is-shared")


def _is_loopback(host: str | None) -> bool:
    return host in (None, "", "localhost", "::1", "ip6-localhost") or (host or "").startswith("127.")


def check_reachable_from_nodes(uri: str, shared: bool) -> None:
    """Refuse a tracking URI the compute nodes cannot reach (a SQLite file on a node-local
    filesystem or tmpfs, a loopback address) unless ``shared`` (``--store-is-shared``)."""
    if shared:
        return
    escape = f"if the compute nodes do reach it as given (one machine), add --store-is-shared or set {SHARED_ENV}=1"
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        local = next((p for p in NOT_SHARED if path == Path(p) or Path(p) in path.parents), None)
        if local is None and _on_tmpfs(path):
            local = "a tmpfs"
        if local:
            raise SlurmError(
                f"tracking URI {uri}: {path} is on {local}, which the compute nodes do not share, so their runs "
                "would never reach it; put the store on a shared filesystem that supports POSIX locks (e.g. "
                "--tracking-uri sqlite:///$HOME/orch/mlflow.db) or use a tracking server (--tracking-uri "
                f"http://LOGIN-NODE:5000); {escape}")
        return
    if _is_loopback(urlsplit(uri).hostname):
        raise SlurmError(f"tracking URI {uri} names this machine by a loopback address, which the compute nodes "
                         f"cannot reach; use its host name (e.g. http://{os.uname().nodename}:5000, the server "
                         f"started with --host 0.0.0.0); {escape}")


def _on_tmpfs(path: Path) -> bool:
    """Whether the deepest mount point holding ``path`` is a tmpfs (the last mounted, of several there)."""
    import psutil

    target = str(path.parent)
    try:
        partitions = psutil.disk_partitions(all=True)
    except OSError:  # no readable mount table: nothing to warn about
        return False
    mounts = [p for p in partitions if target == p.mountpoint or target.startswith(p.mountpoint.rstrip("/") + "/")]
    return bool(mounts) and max(reversed(mounts), key=lambda p: len(p.mountpoint)).fstype in ("tmpfs", "ramfs")


def job_name(sweep_id: str) -> str:
    return f"orch-{sweep_id}"


def warn_seconds(options: SlurmOptions) -> int:
    """The time-limit warning's lead: 120 s, or half of a limit under four minutes."""
    minutes = options.minutes()
    return WARN_SECONDS if minutes is None else int(max(10, min(WARN_SECONDS, minutes * 30)))


def log_dir(options: SlurmOptions) -> Path:
    return Path(options.log_dir or Path.cwd() / "slurm-logs").expanduser().resolve()


def job_script(options: SlurmOptions, *, name: str, n_tasks: int, task_input: Sequence[str], comment: str) -> str:
    """The sbatch script of an array of ``n_tasks``: directives (a ``--slurm`` option replaces orch's
    of the same key; the others follow), then the tasks' input as a heredoc."""
    array = f"0-{n_tasks - 1}" + (f"%{options.array_parallelism}" if options.array_parallelism else "")
    pairs = [("job-name", name), ("partition", options.partition), ("output", str(log_dir(options) / "%x-%A_%a.out")),
             ("open-mode", "append"), ("chdir", str(Path.cwd())), ("export", "ALL"), ("array", array),
             ("time", options.time), ("signal", f"B:USR1@{warn_seconds(options)}"), ("requeue", "")]
    given = dict(options.extra)
    merged = [(k, given.pop(k) if k in given else v) for k, v in pairs if v is not None or k in given]
    merged += [(k, v) for k, v in options.extra if k in given]
    lines = ["#!/bin/bash", *(f"#SBATCH --{k}={v}" if v != "" else f"#SBATCH --{k}" for k, v in merged),
             f"# {comment}",
             f"exec {shlex.quote(sys.executable)} -m orchestrator.launch.slurm_task <<'{INPUT_END}'",
             *task_input, INPUT_END, ""]
    return "\n".join(lines)


def test_only(script: str) -> None:
    """``sbatch --test-only``: Slurm validates the script's options and resources, submits nothing."""
    out = _run(["sbatch", "--test-only"], "nothing was submitted", input=script)
    if out.returncode != 0:
        lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip() and not ln.startswith("Try ")]
        raise SlurmError(f"Slurm would refuse the job ({'; '.join(lines)[:500]}); fix the option it names "
                         "(see `orch sweep ... --launcher slurm --dry-run` for the script)")


def submit(script: str) -> str:
    out = _run(["sbatch", "--parsable"], "whether the job was submitted is unknown (see `squeue`)", input=script)
    if out.returncode != 0:
        raise SlurmError(f"sbatch refused the job: {out.stderr.strip()[:500]}")
    return out.stdout.strip().split(";")[0]


def live_jobs(sweep_id: str) -> list[LiveJob]:
    """The sweep's live jobs (an array's pending tasks one by one). A SlurmError when squeue fails:
    unknown states must never read as "no live job" (a sweep closed, points run twice)."""
    return _squeue(["-n", job_name(sweep_id)])


def is_live(job_id: str) -> bool:
    """Whether squeue lists job ``job_id`` as live; a SlurmError when squeue fails."""
    return bool(_squeue(["-j", job_id]))


def _squeue(args: Sequence[str]) -> list[LiveJob]:
    what = "the sweep's jobs are in an unknown state, so nothing was closed or submitted"
    out = _run(["squeue", "-h", "-r", "-o", "%i|%T", *args], what)
    if out.returncode != 0 and "Invalid job id" not in out.stderr:  # an unknown id: the job left the queue
        raise SlurmError(f"squeue failed ({(out.stderr or out.stdout).strip()[:300]}): {what}; try again when "
                         "Slurm answers")
    rows = [line.strip().split("|") for line in out.stdout.splitlines()]
    return [LiveJob(*row) for row in rows if len(row) == 2 and row[1] in LIVE_STATES]
