"""What the benchmark scripts share: the machine line and writing the report."""

from __future__ import annotations

import argparse
import contextlib
import platform
from pathlib import Path


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def run_parser(doc: str) -> argparse.ArgumentParser:
    """The options of the in-process benchmarks: --repeats, --set."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side (default 3)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, as orch run --set (repeatable)")
    return parser


def finish(header: list[str], table: str, out: Path | None) -> None:
    """Print the table; with ``out``, also write header and table there as markdown."""
    print(table, flush=True)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(header) + "\n" + table + "\n")
