"""What differs between two runs (``orch diff``): params, code and packages, as lines to print.
Pure: it compares two dicts as :func:`orchestrator.store.provenance.read_provenance` reads them.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Mapping

def diff_runs(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """The report: which runs, then the params, code and packages sections."""
    lines = [f"A: {a['run_id']} ({a.get('name') or 'unnamed'})", f"B: {b['run_id']} ({b.get('name') or 'unnamed'})"]
    lines += _section("params", diff_params(a["params"], b["params"]), "identical")
    patched = ", the same diff.patch" if a.get("patch") is not None else ", no uncommitted changes"
    lines += _section("code", diff_code(a, b), f"identical (commit {_shown(a.get('commit'))}{patched})")
    packages = a.get("packages")
    lines += _section("packages", diff_packages(packages, b.get("packages")), f"identical ({len(packages or ())})")
    return lines


def _section(title: str, body: list[str], same: str) -> list[str]:
    return [f"{title}: {same}"] if not body else [f"{title}:", *(f"  {line}" for line in body)]


def diff_params(a: Mapping[str, str], b: Mapping[str, str]) -> list[str]:
    """``key: a → b`` for a key whose values differ; ``key: v (only in A)`` for a key one run lacks."""
    return _changes(a, b, "{key}: {a} (only in A)", "{key}: {b} (only in B)", "{key}: {a} → {b}")


def diff_code(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Entry, commit and Python version where they differ; and when the patches differ, which run
    has one and a unified diff of the two."""
    lines = [f"{key}: {_shown(a.get(key))} → {_shown(b.get(key))}" for key in ("entry", "commit", "python")
             if a.get(key) != b.get(key)]
    patch_a, patch_b = a.get("patch"), b.get("patch")
    if patch_a == patch_b:
        return lines
    have = {True: "has one", False: "has none"}
    lines.append(f"diff.patch: A {have[patch_a is not None]}, B {have[patch_b is not None]}")
    lines += [line.rstrip("\n") for line in difflib.unified_diff(
        (patch_a or "").splitlines(keepends=True), (patch_b or "").splitlines(keepends=True),
        "A/code/diff.patch", "B/code/diff.patch")]
    return lines


def diff_packages(a: Mapping[str, str] | None, b: Mapping[str, str] | None) -> list[str]:
    """``+ name==version`` only in B, ``- name==version`` only in A, ``name: 1.0 → 2.0`` changed."""
    if a is None or b is None:
        missing = " and ".join(run for run, env in (("A", a), ("B", b)) if env is None)
        return [f"not recorded for {missing} (no environment.txt)"]
    return _changes(a, b, "- {key}=={a}", "+ {key}=={b}", "{key}: {a} → {b}", order=str.lower)


def _changes(a: Mapping[str, str], b: Mapping[str, str], only_a: str, only_b: str, changed: str,
             order: Callable[[str], Any] | None = None) -> list[str]:
    lines = []
    for key in sorted({*a, *b}, key=order):
        if key not in b:
            lines.append(only_a.format(key=key, a=a[key]))
        elif key not in a:
            lines.append(only_b.format(key=key, b=b[key]))
        elif a[key] != b[key]:
            lines.append(changed.format(key=key, a=a[key], b=b[key]))
    return lines


def _shown(value: Any) -> str:
    return "(none)" if value is None else str(value)
