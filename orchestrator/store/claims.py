"""Fencing: a point process that has lost its claim on a point writes no checkpoint and no final state.

Whoever takes a point over (the queue's reaper, a Slurm task, a resumed sweep) ends the earlier
run first; a frozen process that thaws checks its claim at each epoch's end, before each
checkpoint and before it ends FINISHED, and raises :class:`LostClaim` (exit LOST_CLAIM, neither
retried nor a failure). A takeover between a check and its write (one round trip) still lets
that one write land: docs/explanation/failures.md states this window.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Mapping

from orchestrator.store.schema import Status, Tag, TrialAttr

log = logging.getLogger(__name__)


class LostClaim(Exception):
    """Another process has taken this process's point over; the message says who or how."""


class Fence:
    """The claim of one run: :meth:`check` raises :class:`LostClaim` once it is lost. ``claim``: the
    queue's storage, study and trial handed with the job; without it only the run's status counts."""

    def __init__(self, store: Any, run_id: str, claim: Mapping[str, Any] | None = None):
        self.store, self.run_id, self.claim = store, run_id, claim

    def check(self) -> None:
        why = self._run_lost() or self._trial_lost()
        if why:
            raise LostClaim(why)

    def _run_lost(self) -> str | None:
        run = self.store.get_run(self.run_id)
        if run.info.status in Status.LIVE:
            return None
        why = run.data.tags.get(Tag.FAILURE_REASON)
        return (f"lost its claim: run {self.run_id} was ended {run.info.status} by another process"
                + (f" ({why})" if why else ""))

    def _trial_lost(self) -> str | None:
        if not self.claim:
            return None
        from optuna.trial import TrialState

        try:
            storage = _storage(self.claim["storage"])
            trial = storage.get_trial(self.claim["trial_id"])
            if trial.state == TrialState.RUNNING:
                return None
            study_id = storage.get_study_id_from_name(self.claim["study"])
            later = [t for t in storage.get_all_trials(study_id, deepcopy=False)
                     if t.number > trial.number and t.user_attrs.get(TrialAttr.RUN_KEY) == self.claim["run_key"]
                     and t.state in (TrialState.RUNNING, TrialState.COMPLETE)]  # a requeued trial that was claimed
        except Exception as err:  # noqa: BLE001 - an unreachable queue is not a lost claim: the run's status decides
            log.warning("warning: could not check the queue's claim on this point (%s: %s)", type(err).__name__, err)
            return None
        if later:
            return f"lost its claim to {later[-1].user_attrs[TrialAttr.WORKER]}"
        return f"lost its claim: its queue trial {trial.number} is {trial.state.name} (the point was requeued)"


@functools.cache  # a point process opens each queue's storage once
def _storage(url: str) -> Any:
    from orchestrator.store.optuna_storage import open_storage

    return open_storage(url)
