"""Slurm, on the submitting side: options, checks, job scripts, ``sbatch`` and ``squeue``.

``orch sweep GRID --launcher slurm`` writes plain ``sbatch`` scripts and submits them
with ``sbatch --parsable`` (no submitit: the script a user sees with ``--dry-run`` is
exactly what is submitted, a task is an ordinary ``python -m orchestrator.launch.slurm_task``
process, and nothing is pickled onto the shared disk). Two kinds of sweep job:

* array mode (default): one array task per ``--runs-per-gpu`` points (one point by
  default); the jobs, as JSON lines, are in the script itself, so a task needs only the
  tracking URI, not the grid file. A small close job (``--dependency=afterany``) writes
  the sweep's summary and ends its parent run once every task has ended.
* queue mode (``--storage postgresql://…``): K array tasks, each an ``orch worker`` on the
  queue.

Every job of a sweep is named ``orch-<sweep id>`` (close jobs ``orch-<sweep id>-close``),
which is how reruns, ``orch status`` and the close job find them. Nothing here imports
mlflow, torch or optuna: every check runs before anything is recorded or submitted.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence
from urllib.parse import urlsplit

from orchestrator.errors import UserError
from orchestrator.store.schema import Tag

WARN_SECONDS = 120  # the time-limit warning (SIGUSR1) comes this long before the limit
CLOSE_MINUTES = 15  # time limit of a sweep's close job
LIVE_STATES = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
               "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT")
NOT_SHARED = ("/tmp", "/var/tmp", "/dev/shm", "/run")  # node-local on every cluster we know of
SHARED_ENV = "ORCH_STORE_IS_SHARED"  # "1": the store is reachable from the compute nodes as given
SCONTROL_TIMEOUT = 30
TASK_HEADER = "ORCH_TASK"  # the heredoc delimiter of a job script


class SlurmError(UserError):
    """A Slurm option or the cluster cannot be used as given: names the problem and the fix."""


@dataclass(frozen=True)
class SlurmOptions:
    """What ``orch sweep --launcher slurm`` asks of Slurm."""

    partition: str | None = None
    time: str | None = None  # Slurm's time format, checked by parse_time
    gpus_per_task: int | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    array_parallelism: int | None = None  # tasks running at once (array mode); tasks (queue mode)
    extra: tuple[tuple[str, str], ...] = ()  # --slurm KEY=VALUE
    runs_per_gpu: int = 1
    log_dir: str | None = None

    def minutes(self) -> float | None:
        return parse_time(self.time) if self.time else None


# --------------------------------------------------------------------------- checks


TIME_FORMS = ("MINUTES", "MINUTES:SECONDS", "HOURS:MINUTES:SECONDS", "DAYS-HOURS", "DAYS-HOURS:MINUTES",
              "DAYS-HOURS:MINUTES:SECONDS")


def parse_time(value: str) -> float | None:
    """Slurm's ``--time`` formats → minutes (None for ``infinite``/``unlimited``).

    Raises:
        SlurmError: the value is not one of Slurm's forms.
    """
    text = value.strip().lower()
    if text in ("infinite", "unlimited"):
        return None
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if m:
        days, a, b, c = m.groups()
        a, b, c = int(a), b and int(b), c and int(c)
        if days is not None:  # days-hours[:minutes[:seconds]]
            minutes = int(days) * 1440 + a * 60 + (b or 0) + (c or 0) / 60
        elif c is not None:  # hours:minutes:seconds
            minutes = a * 60 + b + c / 60
        elif b is not None:  # minutes:seconds
            minutes = a + b / 60
        else:
            minutes = a
        if minutes > 0:
            return minutes
    raise SlurmError(f"--time {value!r} is not a Slurm time limit; use one of {', '.join(TIME_FORMS)} "
                     "(e.g. --time 90, --time 1:30:00, --time 2-00:00)")


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


def _run(cmd: Sequence[str], timeout: float = SCONTROL_TIMEOUT, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)


def check_sbatch() -> None:
    if shutil.which("sbatch") is None or shutil.which("squeue") is None:
        raise SlurmError("--launcher slurm: no sbatch/squeue on PATH; run on a login node of the cluster "
                         "(or load its Slurm module), or drop --launcher slurm to run here")


def partitions() -> list[str]:
    """The cluster's partition names (``sinfo``); the default one first."""
    try:
        out = _run(["sinfo", "-h", "-o", "%P"])
    except (OSError, subprocess.SubprocessError) as err:
        raise SlurmError(f"cannot ask Slurm for its partitions ({err}); is the controller up? try `sinfo`") from None
    if out.returncode != 0:
        raise SlurmError(f"sinfo failed: {out.stderr.strip()[:300]}; is the Slurm controller reachable? try `sinfo`")
    names = [p.strip() for p in out.stdout.split() if p.strip()]
    return sorted(dict.fromkeys(n.rstrip("*") for n in names), key=lambda n: f"{n}*" not in names)


def check_partition(name: str | None) -> None:
    known = partitions()
    if name is not None and name not in known:
        raise SlurmError(f"--partition {name!r}: no such partition; partitions: {', '.join(known) or 'none'} "
                         "(see `sinfo`)")


def _is_loopback(host: str | None) -> bool:
    return host in (None, "", "localhost", "::1", "ip6-localhost") or (host or "").startswith("127.")


def check_reachable_from_nodes(uri: str, shared: bool) -> None:
    """Refuse a tracking URI that compute nodes cannot reach, when that can be told from here.

    A SQLite file must be on a filesystem the nodes share (not /tmp, /var/tmp, /dev/shm,
    /run or a tmpfs); a server or database must not be named by a loopback address.
    ``shared`` (``--store-is-shared``) says the nodes reach it as given: a one-machine
    cluster, say.
    """
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
    parts = urlsplit(uri)
    if _is_loopback(parts.hostname):
        raise SlurmError(f"tracking URI {uri} names this machine by a loopback address, which the compute nodes "
                         f"cannot reach; use its host name (e.g. http://{os.uname().nodename}:5000, the server "
                         f"started with --host 0.0.0.0); {escape}")


def check_storage_reachable(url: str, shared: bool) -> None:
    if not shared and _is_loopback(urlsplit(url).hostname):
        raise SlurmError(f"--storage {url.split('@')[-1]}: a loopback address is unreachable from the compute "
                         f"nodes; use the database host's name; if they do reach it, add --store-is-shared")


def _on_tmpfs(path: Path) -> bool:
    """Whether the deepest mount point holding ``path`` is a tmpfs (from /proc/mounts)."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return False
    best, fstype = "", ""
    target = str(path.parent)
    for point, kind in mounts:
        if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, fstype = point, kind
    return fstype in ("tmpfs", "ramfs")


def check(options: SlurmOptions, uri: str, *, shared: bool, storage: str | None = None) -> None:
    """Every check before submission: sbatch present, partition known, time parses, store reachable."""
    options.minutes()
    check_sbatch()
    check_partition(options.partition)
    check_reachable_from_nodes(uri, shared)
    if storage:
        check_storage_reachable(storage, shared)


# --------------------------------------------------------------------------- job scripts


def job_name(sweep_id: str, close: bool = False) -> str:
    return f"orch-{sweep_id}{'-close' if close else ''}"


def warn_seconds(options: SlurmOptions) -> int:
    """The warning's lead time: a ``--slurm signal=…@N``'s N, else 120 s or half of a shorter limit."""
    extra = dict(options.extra)
    given = re.search(r"@(\d+)$", extra.get("signal", ""))
    if given:
        return int(given.group(1))
    time_limit = extra.get("time") or options.time
    minutes = parse_time(time_limit) if time_limit else None
    if minutes is None:
        return WARN_SECONDS
    return int(max(10, min(WARN_SECONDS, minutes * 60 / 2)))


def _directives(pairs: Sequence[tuple[str, str]]) -> list[str]:
    return [f"#SBATCH --{k}={v}" if v != "" else f"#SBATCH --{k}" for k, v in pairs]


def _merge(defaults: Sequence[tuple[str, str]], extra: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """sbatch options: orch's, each replaced by a ``--slurm`` of the same key; the other extras after."""
    given = dict(extra)
    merged = [(k, given.pop(k)) if k in given else (k, v) for k, v in defaults]
    return merged + [(k, v) for k, v in extra if k in given]


def log_dir(options: SlurmOptions) -> Path:
    return Path(options.log_dir or Path.cwd() / "slurm-logs").expanduser().resolve()


def _common(options: SlurmOptions, name: str, output: str = "%x-%A_%a.out") -> list[tuple[str, str]]:
    pairs = [("job-name", name)]
    if options.partition:
        pairs.append(("partition", options.partition))
    pairs += [("output", str(log_dir(options) / output)), ("open-mode", "append"),
              ("chdir", str(Path.cwd())), ("export", "ALL")]
    return pairs


def task_script(options: SlurmOptions, *, name: str, n_tasks: int, header: Mapping, jobs: Sequence[Mapping],
                comment: str) -> str:
    """The sbatch script of a sweep's array: its directives, then its task's input as a heredoc."""
    array = f"0-{n_tasks - 1}" + (f"%{options.array_parallelism}" if options.array_parallelism else "")
    pairs = _common(options, name) + [("array", array)]
    if options.time:
        pairs.append(("time", options.time))
    for key, value in (("cpus-per-task", options.cpus_per_task), ("gpus-per-task", options.gpus_per_task),
                       ("mem", options.mem)):
        if value is not None:
            pairs.append((key, str(value)))
    pairs += [("signal", f"B:USR1@{warn_seconds(options)}"), ("requeue", "")]
    return _script(_merge(pairs, options.extra), comment, header, jobs)


def close_script(options: SlurmOptions, *, name: str, after: Sequence[str], header: Mapping, comment: str) -> str:
    """The close job: runs once every job in ``after`` has ended, however it ended."""
    pairs = _common(options, name, "%x-%j.out") + [
        ("dependency", "afterany:" + ":".join(after)), ("time", str(CLOSE_MINUTES)), ("cpus-per-task", "1"),
        ("kill-on-invalid-dep", "no")]
    keep = [(k, v) for k, v in options.extra if k in ("account", "qos", "reservation", "clusters", "constraint")]
    return _script(_merge(pairs, keep), comment, header, ())


def _script(pairs: Sequence[tuple[str, str]], comment: str, header: Mapping, jobs: Sequence[Mapping]) -> str:
    python = shlex.quote(sys.executable)
    lines = ["#!/bin/bash", *_directives(pairs), *(f"# {c}" for c in comment.splitlines()),
             f"exec {python} -m orchestrator.launch.slurm_task <<'{TASK_HEADER}'", json.dumps(header),
             *(json.dumps(j) for j in jobs), TASK_HEADER, ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- sbatch, squeue


def test_only(script: str) -> None:
    """``sbatch --test-only``: Slurm validates the script's options and resources, submits nothing."""
    out = _run(["sbatch", "--test-only"], input=script)
    if out.returncode != 0:
        lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip() and not ln.startswith("Try ")]
        raise SlurmError(f"Slurm would refuse the job ({'; '.join(lines)[:500]}); fix the option it names "
                         "(see `orch sweep ... --launcher slurm --dry-run` for the script)")


def submit(script: str, *options: str) -> str:
    """``sbatch --parsable [options]`` the script; returns the job id."""
    out = _run(["sbatch", "--parsable", *options], input=script)
    if out.returncode != 0:
        raise SlurmError(f"sbatch refused the job: {out.stderr.strip()[:500]}")
    return out.stdout.strip().split(";")[0]


def resubmit_after(job_id: str, after: Sequence[str]) -> str:
    """Submit job ``job_id``'s own batch script again, to run once every job in ``after`` has
    ended (the command line's ``--dependency`` overrides the script's); returns the new id."""
    script = _run(["scontrol", "write", "batch_script", job_id, "-"])
    if script.returncode != 0 or not script.stdout.startswith("#!"):
        raise SlurmError(f"could not read job {job_id}'s script: {(script.stderr or script.stdout).strip()[:300]}")
    return submit(script.stdout, "--dependency=afterany:" + ":".join(after))


def live_jobs(sweep_id: str) -> list[tuple[str, str, str]]:
    """(job id as squeue shows it — ``12_3`` for an array task —, state, name) of the sweep's live jobs."""
    names = f"{job_name(sweep_id)},{job_name(sweep_id, close=True)}"
    out = _squeue(["-h", "-r", "-n", names, "-o", "%i|%T|%j"])
    _check_squeue(out)
    jobs = []
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and parts[1] in LIVE_STATES:
            jobs.append((parts[0], parts[1], parts[2]))
    return jobs


def job_states(job_ids: Iterable[str]) -> dict[str, str]:
    """squeue's state of each job still known to it (``12_3`` or ``57``).

    Raises:
        SlurmError: squeue failed or did not answer (a job missing from the answer has ended).
    """
    ids = sorted(set(job_ids))
    if not ids or shutil.which("squeue") is None:
        return {}
    out = _squeue(["-h", "-r", "-o", "%i|%T|%A", "-j", ",".join(i.split("_")[0] for i in ids)])
    if "Invalid job id" not in out.stderr:  # every job already left the queue: not an error
        _check_squeue(out)
    states = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            states[parts[0]] = parts[1]
            states[parts[2]] = parts[1]  # the plain job id of an array task
    return {i: states[i] for i in ids if i in states}


def _squeue(args: Sequence[str]) -> subprocess.CompletedProcess:
    """``squeue ARGS``; one that cannot be run or does not answer in time raises, as a failed one does
    (:func:`_check_squeue`)."""
    try:
        return _run(["squeue", *args])
    except (OSError, subprocess.SubprocessError) as err:
        raise SlurmError(f"squeue did not answer ({err}): the sweep's jobs are in an unknown state, so nothing "
                         "was closed or resubmitted; try again when Slurm answers") from None


def _check_squeue(out: subprocess.CompletedProcess) -> None:
    """A failed squeue (a busy controller) leaves the jobs' states unknown: never read that
    as "no live job", which would close, resubmit or steal points that are still running."""
    if out.returncode != 0:
        raise SlurmError(f"squeue failed ({(out.stderr or out.stdout).strip()[:300]}): the sweep's jobs are in an "
                         "unknown state, so nothing was closed or resubmitted; try again when Slurm answers")


def job_end_time(job_id: str) -> float | None:
    """When the job's time limit ends (epoch seconds; None without a limit or when squeue cannot say)."""
    import time

    try:
        out = _run(["squeue", "-h", "-j", job_id, "-o", "%e"])
        return time.mktime(time.strptime(out.stdout.strip(), "%Y-%m-%dT%H:%M:%S"))
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def task_tags(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The Slurm job this process runs in, as run tags (empty outside Slurm)."""
    env = os.environ if env is None else env
    job = env.get("SLURM_JOB_ID")
    if not job:
        return {}
    array, index = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    tags = {Tag.SLURM_JOB_ID: job, Tag.SLURM_JOB: f"{array}_{index}" if array and index else job,
            Tag.SLURM_RESTARTS: env.get("SLURM_RESTART_COUNT", "0")}
    if array and index:
        tags[Tag.SLURM_ARRAY_JOB_ID], tags[Tag.SLURM_ARRAY_TASK_ID] = array, index
    return tags


@dataclass
class Manifest:
    """Which points each task of one submitted array runs (the parent's ``slurm/<job id>.json``)."""

    job_id: str
    mode: str  # "points" or "worker"
    tasks: list[list[str]] = field(default_factory=list)  # run keys per array index

    def to_json(self) -> str:
        return json.dumps({"job_id": self.job_id, "mode": self.mode, "tasks": self.tasks}, indent=1)

    @classmethod
    def from_json(cls, data: Mapping) -> Manifest:
        return cls(str(data["job_id"]), data.get("mode", "points"), [list(t) for t in data.get("tasks", [])])
