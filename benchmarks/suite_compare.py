"""Two runs of the test suite side by side, from their JUnit XML reports.

The suite of one commit is timed against another's on the same machine: each run writes a
report (pytest's ``--junitxml``), and this script matches their tests by test file name
and test name (files have moved between folders; a name says what a test checks) and
prints the totals: all tests, the tests both runs have, and those only one has, by file.

Usage (a fresh clone of each commit, one after the other on an idle machine)::

    git clone REPO /tmp/base && git -C /tmp/base checkout BASE
    (cd /tmp/base && PYTEST_ADDOPTS=--junitxml=/tmp/base.xml bash .ci/run)
    git clone REPO /tmp/head
    (cd /tmp/head && PYTEST_ADDOPTS=--junitxml=/tmp/head.xml bash .ci/run)
    python benchmarks/suite_compare.py /tmp/base.xml /tmp/head.xml

A test's time is its setup, call and teardown (pytest's default ``junit_duration_report``),
so a module fixture's cost is counted with the first test that uses it.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path


def load(path: Path) -> dict[tuple[str, str], tuple[float, bool]]:
    """(test file's module name, test name) → (seconds, skipped)."""
    tests = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        tests[(module, case.get("name", ""))] = (float(case.get("time", 0)), case.find("skipped") is not None)
    return tests


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:04.1f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", type=Path, help="JUnit XML of the earlier commit's run")
    parser.add_argument("head", type=Path, help="JUnit XML of the later commit's run")
    parser.add_argument("--top", type=int, default=8, help="files listed for the tests only one run has")
    args = parser.parse_args(argv)
    base, head = load(args.base), load(args.head)

    ran_in_both = [k for k in base if k in head and not base[k][1] and not head[k][1]]
    only_base = [k for k in base if k not in head]
    only_head = [k for k in head if k not in base]

    def total(tests: dict, keys) -> float:
        return sum(tests[k][0] for k in keys)

    rows = [
        ("all tests", len(base), total(base, base), len(head), total(head, head)),
        ("tests in both (run, not skipped, in both)", len(ran_in_both), total(base, ran_in_both),
         len(ran_in_both), total(head, ran_in_both)),
        ("tests only in one", len(only_base), total(base, only_base), len(only_head), total(head, only_head)),
    ]
    print(f"| tests | base: {args.base.name} n | base s | head: {args.head.name} n | head s | head / base |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, nb, sb, nh, sh in rows:
        ratio = f"{sh / sb:.2f}" if sb > 0 else "-"
        print(f"| {name} | {nb} | {sb:.0f} ({_minutes(sb)}) | {nh} | {sh:.0f} ({_minutes(sh)}) | {ratio} |")
    for label, tests, keys in (("only in head", head, only_head), ("only in base", base, only_base)):
        by_file: dict[str, list[float]] = defaultdict(list)
        for k in keys:
            by_file[k[0]].append(tests[k][0])
        if by_file:
            ranked = sorted(by_file.items(), key=lambda item: -sum(item[1]))[:args.top]
            print(f"\n{label}, by test file: " + ", ".join(f"{m} {len(v)} tests {sum(v):.0f} s" for m, v in ranked))
    return 0


if __name__ == "__main__":
    sys.exit(main())
