"""Which points of a sweep are missing, decided once, above every launcher.

"Is this point done?" has one answer, :func:`finished_results`: its run key has a finished result
in the experiment, whoever finished it; anything else runs again. :func:`plan_sweep` finds or
creates the parent, closes the runs dead processes left RUNNING, and splits done from missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from orchestrator.errors import StoreFailure
from orchestrator.execute.job import Job
from orchestrator.store.schema import Artifact, ExpectedPoint, Kind, Status, Tag, points_json

if TYPE_CHECKING:
    from orchestrator.grid.load import RunSpec, SweepSpec
    from orchestrator.store.locks import ParentHeartbeat
    from orchestrator.store.tracking import TrackingStore


def finished_results(store: TrackingStore, experiment_id: str, run_keys: Iterable[str]) -> dict[str, Any]:
    """Run key -> a finished result of it in the experiment, for those of ``run_keys`` that are done."""
    keys = set(run_keys)
    runs = store.finished_runs(experiment_id, next(iter(keys)) if len(keys) == 1 else None) if keys else []
    return {r.data.tags[Tag.RUN_KEY]: r for r in runs if r.data.tags[Tag.RUN_KEY] in keys}


def find_run(store: TrackingStore, run_id: str) -> Any | None:
    """The run, or None when the tracking store does not hold it (another store, or deleted)."""
    try:
        return store.get_run(run_id)
    except StoreFailure:
        raise
    except Exception:  # noqa: BLE001 - MLflow raises its own exception types for a missing run
        return None


@dataclass
class Plan:
    spec: SweepSpec
    uri: str
    experiment_id: str
    parent_run_id: str
    resumed: bool  # the parent existed before
    closed: bool  # the parent had FINISHED and nothing was missing: it was left as it was
    missing: list[RunSpec]  # the grid's points without a finished result (every point with --rerun)
    done: list[RunSpec]  # the grid's points with one
    rerun: bool = False

    def jobs(self, runs: Sequence[RunSpec] | None = None) -> list[Job]:
        """The jobs of ``runs`` (default: the missing points)."""
        return [Job.from_spec(r, self.spec.entry, uri=self.uri, experiment_id=self.experiment_id, parent_run_id=self.parent_run_id,
                              sweep_id=self.spec.sweep_id, resume=not self.rerun)
                for r in (self.missing if runs is None else runs)]


def expected_points(spec: SweepSpec) -> list[ExpectedPoint]:
    """The sweep's points as logged in ``points.json`` (read back by ``orch compare``)."""
    return [ExpectedPoint(name=r.name, run_key=r.run_key, point=r.point, setting=r.setting, index=r.index,
                          added=r.point.get("seed") not in spec.seeds)
            for r in spec.runs]


def plan_sweep(store: TrackingStore, spec: SweepSpec, *, rerun: bool = False,
               heartbeat: ParentHeartbeat | None = None, reopen: bool = False) -> Plan:
    """Find or create the parent run, close orphans, and split the points into done and missing.

    A FINISHED parent is reopened when points are missing (or with ``reopen``), else left as it is
    (``Plan.closed``). ``heartbeat``: wait for (or refuse) a sweep beating elsewhere, then beat.
    """
    exp_id = store.ensure_experiment(spec.name)
    if heartbeat is not None:
        heartbeat.claim(exp_id)
    parent = store.find_sweep_parent(exp_id, spec.sweep_id)
    finished = set() if rerun else set(finished_results(store, exp_id, [r.run_key for r in spec.runs]))
    missing = [r for r in spec.runs if r.run_key not in finished]
    done = [r for r in spec.runs if r.run_key in finished]
    if parent is None:
        parent_id = store.start_run(
            exp_id, run_name=spec.name, params={"axes": ",".join(spec.axes) or "-",
                                                "seeds": ",".join(map(str, spec.seeds)), "n_points": len(spec.runs)},
            tags={Tag.KIND: Kind.SWEEP, Tag.SWEEP: spec.sweep_id, Tag.GRID_FILE: spec.path,
                  Tag.N_POINTS: str(len(spec.runs))})
    else:
        parent_id = parent.info.run_id
    closed = parent is not None and parent.info.status == Status.FINISHED and not (missing or reopen)
    if heartbeat is not None and not closed:  # a closed sweep runs nothing: its rerun writes nothing, a beat neither
        heartbeat.start(parent_id)
    if parent is not None and not closed:
        store.reopen_run(parent_id)
    if parent is None or store.download_json_if_any(parent_id, Artifact.POINTS) is None:  # stopped before this
        store.log_text(parent_id, spec.text, Artifact.GRID)
        store.log_text(parent_id, points_json(expected_points(spec)), Artifact.POINTS)
    store.fail_orphans(exp_id, spec.sweep_id,
                       "left RUNNING by a sweep process that died; marked FAILED when the sweep resumed")
    return Plan(spec, store.uri, exp_id, parent_id, parent is not None, closed, missing, done, rerun)
