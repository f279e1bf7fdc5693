"""Which run keys are done, answered without importing mlflow (``orch sweep --dry-run``).

The dry run must answer in about a second, and ``import mlflow`` alone takes two. MLflow
has no mlflow-free reader, so this module is the one adapter that reads a store's
runs without it: a SQLite store's tables directly (read-only, ``mode=ro``, so it never
creates or migrates a store), or a tracking server's REST API. Either way it fetches
each run's status and the tags that decide, and applies the same rule as every other
command, :func:`orchestrator.store.schema.is_finished_result`. It returns None when the
store cannot be read this way.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.parse
import urllib.request

from orchestrator.store.schema import Status, Tag, is_finished_result, tag_filter

_DECIDING_TAGS = (Tag.RUN_KEY, Tag.TRIAL_STATE, Tag.KIND)


def finished_keys(uri: str, experiment: str, kind: str | None = None, timeout: float = 2.0) -> set[str] | None:
    """Run keys with a finished result in ``experiment`` (of that ``Tag.KIND``), or None."""
    if uri.startswith("sqlite:///"):
        return _sqlite(uri[len("sqlite:///"):], experiment, kind, timeout)
    if uri.startswith(("http://", "https://")):
        return _rest(uri, experiment, kind, timeout)
    return None


def _keys(runs: list[tuple[str, dict[str, str]]], kind: str | None) -> set[str]:
    return {tags[Tag.RUN_KEY] for status, tags in runs
            if is_finished_result(status, tags) and (kind is None or tags.get(Tag.KIND) == kind)}


def _sqlite(path: str, experiment: str, kind: str | None, timeout: float) -> set[str] | None:
    from pathlib import Path

    if not Path(path).exists():
        return set()
    marks = ",".join("?" * len(_DECIDING_TAGS))
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout)
        try:
            rows = con.execute(
                "SELECT r.run_uuid, r.status, t.key, t.value FROM runs r "
                "JOIN experiments e ON e.experiment_id = r.experiment_id "
                f"LEFT JOIN tags t ON t.run_uuid = r.run_uuid AND t.key IN ({marks}) "
                "WHERE e.name = ? AND e.lifecycle_stage = 'active' AND r.lifecycle_stage = 'active' "
                "AND r.status = ?",
                (*_DECIDING_TAGS, experiment, Status.FINISHED),
            ).fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return None
    runs: dict[str, tuple[str, dict[str, str]]] = {}
    for run_id, status, key, value in rows:
        tags = runs.setdefault(run_id, (status, {}))[1]
        if key is not None:
            tags[key] = value
    return _keys(list(runs.values()), kind)


def _get(url: str, body: dict | None, timeout: float) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"{}")


def _rest(uri: str, experiment: str, kind: str | None, timeout: float) -> set[str] | None:
    base = uri.rstrip("/") + "/api/2.0/mlflow"
    try:
        exp = _get(f"{base}/experiments/get-by-name?experiment_name={urllib.parse.quote(experiment)}", None, timeout)
    except urllib.error.HTTPError as err:
        return set() if err.code == 404 else None
    except (urllib.error.URLError, OSError, ValueError):
        return None
    where = f"attributes.status = '{Status.FINISHED}'" + (f" and {tag_filter(Tag.KIND, kind)}" if kind else "")
    body = {"experiment_ids": [exp["experiment"]["experiment_id"]], "filter": where, "max_results": 1000}
    runs: list[tuple[str, dict[str, str]]] = []
    try:
        while True:
            page = _get(f"{base}/runs/search", body, timeout)
            for run in page.get("runs", []):
                tags = {t["key"]: t["value"] for t in run.get("data", {}).get("tags", [])}
                runs.append((run.get("info", {}).get("status", ""), tags))
            if not page.get("next_page_token"):
                return _keys(runs, kind)
            body["page_token"] = page["next_page_token"]
    except (urllib.error.URLError, OSError, ValueError):
        return None
