"""The markdown descriptions (``Tag.NOTE``, on MLflow's overview page) of a sweep's and a tuning
study's parent run."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from orchestrator.analyze.records import summary_rows, value_text
from orchestrator.analyze.render import render, table_text
from orchestrator.analyze.results import CompareResult
from orchestrator.store.schema import ExpectedPoint, Status, TrialState

_STATE_WORDS = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}


# MLflow 3.17's UI shows the GenAI layout unless the browser or this URL parameter says otherwise
# (the experiment tag ``mlflow.experimentKind`` does not).
TRAINING_VIEW = "workflowType=machine_learning"


def run_link(experiment_id: str, run_id: str) -> str:
    """A run's page in the MLflow UI's training layout, relative to the UI's address."""
    return f"#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_VIEW}"


def _values(points: Sequence[ExpectedPoint], key: str) -> list[str]:
    return list(dict.fromkeys(value_text(p.point[key]) for p in points if key in p.point))


def sweep_note(*, name: str, sweep_id: str, experiment_id: str, records: Sequence[Any],
               expected: Sequence[ExpectedPoint], axes: Sequence[str], metric: str | None,
               result: CompareResult | None, artifacts: Sequence[str]) -> str:
    """The sweep parent's description: grid, points done and failed, the table of ``metric``
    (``result``; None: no finished run has it), the best run's link, the artifacts."""
    statuses = [row["status"] for row in summary_rows(records, expected)]
    done = statuses.count(Status.FINISHED)
    failed = sum(s in (Status.FAILED, Status.KILLED) for s in statuses)
    other = len(statuses) - done - failed
    grid = "; ".join(f"`{a}` ∈ {{{', '.join(_values(expected, a))}}}" for a in axes) or "no axes (one setting)"
    lines = [f"**Sweep `{name}`** (`{sweep_id}`)", "",
             f"- Grid: {grid}",
             f"- Seeds: {', '.join(_values(expected, 'seed')) or '–'}",
             f"- Points: {len(expected)}: **{done} done**, {failed} failed"
             + (f", {other} not finished" if other else ""), ""]
    if result is None:
        lines.append(f"No finished point has `{metric}` yet." if metric else
                     "No finished point reports a summary metric yet.")
    else:
        better = "higher" if result.direction == "max" else "lower"
        lines += [f"**{metric}** over seeds ({better} is better; n = finished / expected):", "",
                  render(result, "markdown").rstrip(), ""]
        samples = [s for row in result.rows for s in row.samples if math.isfinite(s.value)]
        if samples:
            best = (max if result.direction == "max" else min)(samples, key=lambda s: s.value)
            lines += [f"Best run: [{best.run_name}]({run_link(experiment_id, best.run_id)}) "
                      f"({metric} {best.value:.4f})", ""]
    lines.append("Artifacts: " + ", ".join(f"`{p}`" for p in artifacts))
    return "\n".join(lines) + "\n"


def tune_note(*, study: str, experiment_id: str, metric: str, direction: str, counts: Mapping[str, int],
              best: Mapping[str, Any] | None, artifacts: Sequence[str]) -> str:
    """A tuning study's parent description: trials by state, the best trial (``number``,
    ``value``, ``params``, ``run_id``), the artifacts."""
    states = ", ".join(f"{n} {_STATE_WORDS.get(s, s.lower())}" for s, n in counts.items())
    lines = [f"**Tuning study `{study}`**: {direction} `{metric}`", "",
             f"- Trials: {sum(counts.values())} ({states})", ""]
    if best is None:
        lines.append("No trial completed yet.")
    else:
        link = (f"[trial {best['number']}]({run_link(experiment_id, best['run_id'])})" if best.get("run_id")
                else f"trial {best['number']}")
        params = [[f"`{k}`", f"{v:.4g}" if isinstance(v, float) else value_text(v)] for k, v in best["params"].items()]
        lines += [f"Best: {link}, {metric} **{best['value']:.4f}**", "",
                  table_text(["parameter", "best value"], params, "markdown").rstrip()]
    lines += ["", "Artifacts: " + ", ".join(f"`{p}`" for p in artifacts)]
    return "\n".join(lines) + "\n"
