"""A point's job and its one serialisation, used by every launcher.

:func:`encode` writes a job as one JSON line (its fields, flat, with an attempt's envelope
fields beside them) and :func:`decode` reads it back, job and envelope apart: local slots write
one per attempt to a point process, Slurm one per point into the job script; the queue keeps
``job.to_dict()`` as the trial's ``TrialAttr.JOB``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from orchestrator.store.schema import Kind, Tag

if TYPE_CHECKING:
    from orchestrator.grid.entry import Entry
    from orchestrator.grid.load import RunSpec

@dataclass(frozen=True)
class Job:
    name: str  # the run's name, e.g. "gn-bs8-s0"
    config: dict  # the resolved config as the entry's params (dotted key → value, seed included)
    uri: str  # tracking URI the run logs to
    experiment_id: str
    parent_run_id: str | None  # the sweep's parent run (None: a run of its own)
    tags: dict  # Tag.KIND, Tag.SWEEP, Tag.POINT, Tag.SETTING, ...
    resume: bool = True  # continue a checkpointed earlier attempt of the point (False: --rerun)
    run_key: str = ""  # what "done" is keyed on (orchestrator.execute.plan.finished_results)
    entry: dict = dataclasses.field(default_factory=dict)  # resolve_entry(**entry): {} is the built-in study

    @classmethod
    def from_spec(cls, spec: RunSpec, entry: Entry, *, uri: str, experiment_id: str, parent_run_id: str,
                  sweep_id: str, resume: bool = True) -> Job:
        return cls(spec.name, entry.params(spec.config), uri, experiment_id, parent_run_id,
                   {Tag.KIND: Kind.POINT, Tag.SWEEP: sweep_id, Tag.POINT: spec.point_label,
                    Tag.SETTING: spec.setting}, resume, spec.run_key, dict(entry.spec))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Job:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def encode(job: Job, /, **envelope: Any) -> str:
    """One line of JSON (no newline): the job's fields, and the ``envelope``'s (other names) beside them."""
    return json.dumps({**job.to_dict(), **envelope})


def decode(line: str) -> tuple[Job, dict[str, Any]]:
    """(the job, the envelope's fields) of a line written by :func:`encode`."""
    data = json.loads(line)
    names = {f.name for f in dataclasses.fields(Job)}
    return Job.from_dict(data), {k: v for k, v in data.items() if k not in names}


def slurm_tags(env: Mapping[str, str] | None = None) -> dict[str, str]:
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
