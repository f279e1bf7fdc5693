"""The house rules of orchestrator/ (tests/house.py): module and function sizes, no study keys, no
fork, few signal handlers, and the package's total size. ``breaches()`` lists what breaks them."""

from __future__ import annotations

import house  # tests/house.py, beside this file (pytest puts this directory on sys.path)


def test_modules_functions_study_keys_fork_and_signal_handlers_keep_the_rules():
    assert [b for b in house.breaches() if not b.startswith("orchestrator/ has ")] == []


def test_orchestrator_stays_within_its_line_budget():
    total = sum(len(p.read_text().splitlines()) for p in house.modules())
    assert total <= house.MAX_LINES
