"""What a tuning study's MLflow parent shows: best params and value, trial counts, ``trials.csv``,
Optuna's plots and a description."""

from __future__ import annotations

import csv
import io
import logging
import warnings
from typing import Any, Sequence

from orchestrator.analyze.notes import tune_note
from orchestrator.store.schema import Artifact, Tag, TrialAttr, TrialState
from orchestrator.store.tracking import TrackingStore

log = logging.getLogger(__name__)

STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def summarize_study(store: TrackingStore, parent_id: str, study: Any, metric: str) -> dict[str, int]:
    """Best params/value, plots, trials.csv and the description on the parent; returns the counts by state."""
    trials = study.get_trials(deepcopy=False)
    logged = [Artifact.GRID, Artifact.SPACE]
    best_info = None
    counts = {s: sum(t.state.name == s for t in trials) for s in STATES}
    n_done = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
    store.set_tags(parent_id, {Tag.trial_count(k): str(v) for k, v in counts.items()})
    if counts[TrialState.COMPLETE]:
        best = study.best_trial
        tags = {f"{Tag.BEST_PREFIX}{k}": str(v) for k, v in best.params.items()}
        tags[Tag.BEST_RUN_ID] = str(best.user_attrs.get(TrialAttr.RUN_ID, ""))
        store.set_tags(parent_id, tags)
        store.log_metrics(parent_id, {"best_value": best.value, "best_trial": best.number}, step=n_done)
        best_info = {"number": best.number, "value": best.value, "params": best.params,
                     "run_id": tags[Tag.BEST_RUN_ID]}
    if trials:
        store.log_text(parent_id, trials_csv(trials, metric), Artifact.TRIALS)
        logged.append(Artifact.TRIALS)
    logged += _log_plots(store, parent_id, study, counts[TrialState.COMPLETE])
    parent = store.get_run(parent_id)
    store.set_note(parent_id, tune_note(
        study=study.study_name, experiment_id=parent.info.experiment_id, metric=metric,
        direction=study.direction.name.lower(), counts=counts, best=best_info, artifacts=logged))
    return counts


def trials_csv(trials: Sequence[Any], metric: str) -> str:
    """One row per trial: number, state, value, last step reported, seconds, params, run id."""
    keys = list(dict.fromkeys(k for t in trials for k in t.params))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["number", "state", metric, "last_step", "seconds", *keys, "run_id"])
    for t in trials:
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and \
            t.datetime_start else ""
        last_step = max(t.intermediate_values) if t.intermediate_values else ""
        writer.writerow([t.number, t.state.name, "" if t.value is None else repr(t.value), last_step,
                         seconds and f"{seconds:.1f}", *(repr(t.params[k]) if k in t.params else "" for k in keys),
                         t.user_attrs.get(TrialAttr.RUN_ID, "")])
    return buf.getvalue()


def _log_plots(store: TrackingStore, parent_id: str, study: Any, n_complete: int) -> list[str]:
    """Optuna's plots that the study's trials allow, on the parent; the paths logged."""
    import matplotlib

    # Optuna draws through pyplot (orch's own figures do not): no GUI backend, ever.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure
    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization import matplotlib as ovm

    logged = []
    plots = [(Artifact.OPTIMIZATION_HISTORY, ovm.plot_optimization_history, 1),
             (Artifact.PARAM_IMPORTANCES, ovm.plot_param_importances, 2)]
    for path, plot, needed in plots:
        if n_complete < needed:
            log.info(f"note: {path} skipped: it needs {needed} complete trial(s), the study has {n_complete}")
            continue
        try:
            with warnings.catch_warnings():
                # ExperimentalWarning, and PED-ANOVA's "importances will be equal" on few trials
                warnings.simplefilter("ignore", ExperimentalWarning)
                warnings.simplefilter("ignore", UserWarning)
                ax = plot(study)
            fig: Figure = ax.figure
        except (ValueError, RuntimeError, ZeroDivisionError) as err:  # e.g. params that never varied
            log.info(f"note: {path} skipped: {type(err).__name__}: {err}")
            continue
        fig.set_size_inches(8, 5)
        fig.tight_layout()
        store.log_figure(parent_id, fig, path)
        logged.append(path)
        plt.close(fig)  # pyplot keeps a figure alive until it is closed
    return logged
