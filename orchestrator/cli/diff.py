"""``orch diff RUN_A RUN_B``: what differs between two runs (params, code, packages), read through
:mod:`orchestrator.store.provenance` and printed by :func:`orchestrator.analyze.diff.diff_runs`."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import click

from orchestrator.cli.group import handle_errors, open_store, tracking_uri_option
from orchestrator.errors import UserError

if TYPE_CHECKING:
    from orchestrator.store.tracking import TrackingStore


@click.command("diff")
@click.argument("run_a")
@click.argument("run_b")
@tracking_uri_option
@handle_errors
def diff_cmd(run_a: str, run_b: str, tracking_uri: str | None) -> None:
    """What differs between two runs: parameters, code and installed packages.

    \b
    RUN_A and RUN_B are run ids (an unambiguous prefix is enough). Prints:
      params    key: A's value → B's value, and keys only one run has
      code      the entry, its git commit, whether each run has an uncommitted
                code/diff.patch and, when the patches differ, a diff of the two
      packages  + added in B, - removed, name: version change (environment.txt)
    Exit codes: 0 compared (whatever differs), 2 a run that does not exist.
    """
    from orchestrator.analyze.diff import diff_runs
    from orchestrator.store.provenance import read_provenance

    store = open_store(tracking_uri, write=False)
    a, b = (read_provenance(store, find_run(store, given)) for given in (run_a, run_b))
    click.echo("\n".join(diff_runs(a, b)))


def find_run(store: TrackingStore, given: str) -> str:
    """The id of the run ``given`` names: its id, or a prefix of one id alone (else UserError)."""
    from mlflow.exceptions import MlflowException

    given = given.strip().lower()
    if not re.fullmatch(r"[0-9a-f]+", given):  # MLflow's run ids are 32 hex digits; a prefix is searched for
        raise UserError(f"{given!r} is not a run id (hex digits); copy one from the run's page (orch ui)")
    try:
        return store.get_run(given).info.run_id
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
    matches = [r.info.run_id for r in store.search(store.experiment_ids(), f"attributes.run_id LIKE '{given}%'")]
    if not matches:
        raise UserError(f"no run {given!r} in {store.uri}; copy the id from the run's page (orch ui) "
                        "or `orch run`'s output")
    if len(matches) > 1:
        shown = ", ".join(sorted(matches)[:5]) + (", …" if len(matches) > 5 else "")
        raise UserError(f"run id prefix {given!r} is ambiguous: {len(matches)} runs start with it ({shown}); "
                        "give more digits")
    return matches[0]
