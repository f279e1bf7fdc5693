"""Scale: orch at N = 100, 1,000 and 10,000 points, side by side, time per point relative to N = 100.

Builds real stores through orch itself: ``orch sweep`` of a trivial entry (benchmarks/scale_entry.py:
trains nothing, logs three steps of three metrics and four summary metrics) over a grid of
settings x 10 seeds, ``--workers 2``, ``ORCH_SYSTEM_METRICS_SECONDS=0``, into a SQLite store (or,
with ``--postgres URL``, a database ``orch_scale_<N>`` on that PostgreSQL server). A finished build
is cached under ``--cache DIR`` (default /tmp/orch-scale-cache), one folder per N (``nN/`` or
``nN-pg/``: grid, entry, store or artifacts, ``build.json`` with how long the build took); a build
that was stopped is resumed by the next run (orch's own resume), its attempts' seconds summed.

Then measures against each finished store, every command a fresh ``python -m orchestrator``
process under ``/usr/bin/time`` (wall and peak RSS), the median of ``--repeats``:

- ``orch sweep GRID --dry-run`` with no store (a store path that does not exist; not created),
- ``orch sweep GRID --dry-run`` against the finished store,
- a rerun of the finished sweep (``orch sweep GRID --workers 2``): it must say
  "nothing to do" and write nothing (run count, file size and sha256 of a SQLite store unchanged;
  on PostgreSQL the runs, their statuses and tags, and the metric and param counts),
- resuming with half the points gone (a copy of the store with every other point run marked
  deleted): seconds from the command's start to its first new point run, then SIGTERM,
- ``orch compare --metric val_acc`` and ``orch status``, with their peak RSS,
- from the build: the scheduler's overhead per point, slot-seconds outside the entry's own
  code = (span of the point runs x workers - the entry's own seconds) / N (the span: first
  point's start to last point's end, so the fixed start and close of the sweep are left out),
  and the store's size per run (SQLite file / N; the artifact folder / N).

``--profile`` runs the slowest measured command at the largest N once more under cProfile and
prints its top functions (cumulative and own time).

Usage::

    python benchmarks/scale.py --sizes 100,1000                       # build (cached), measure
    python benchmarks/scale.py --sizes 10000 --build-only             # the long build alone
    python benchmarks/scale.py --profile --out benchmarks/results/scale_cpu.md
    python benchmarks/scale.py --sizes 100,1000 --postgres postgresql://orch@127.0.0.1:5432
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import cpu_model, finish
from _scale_stores import POINT_ROWS, SEEDS, Store

WORKERS = 2
METRIC = "val_acc"


def orch_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator", *args]


def env_for_orch() -> dict[str, str]:
    env = dict(os.environ, ORCH_SYSTEM_METRICS_SECONDS="0")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("MLFLOW_TRACKING_URI", None)  # every command names its store
    return env


# --------------------------------------------------------------------------- building


def build(store: Store) -> dict:
    """The finished store of ``n`` points: from the cache, else swept now (a stopped build resumes)."""
    n, folder = store.n, store.folder
    done_file = folder / "build.json"
    if store.exists() and done_file.exists():
        return json.loads(done_file.read_text())
    if not store.exists():  # e.g. the PostgreSQL server of an earlier run is gone: start afresh
        for stale in (done_file, folder / "attempts.jsonl"):
            stale.unlink(missing_ok=True)
    store.prepare()
    cmd = orch_cmd("sweep", str(store.grid), "--workers", str(WORKERS), "--tracking-uri", store.uri, "--quiet")
    print(f"  build N={n}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=folder, env=env_for_orch(), capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    with open(folder / "attempts.jsonl", "a") as f:
        f.write(json.dumps({"seconds": wall, "exit": proc.returncode, "date": now()}) + "\n")
    facts = store.facts()
    if proc.returncode != 0 or facts["finished"] != n:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"build N={n}: orch sweep exited {proc.returncode} with {facts['finished']}/{n} points "
                         f"finished; rerun to resume it")
    attempts = [json.loads(line) for line in (folder / "attempts.jsonl").read_text().splitlines()]
    result = {"n": n, "seconds": sum(a["seconds"] for a in attempts), "attempts": len(attempts), "date": now(),
              "load_at_end": os.getloadavg(), **facts}
    done_file.write_text(json.dumps(result, indent=1))
    print(f"  build N={n}: {result['seconds']:.0f} s", file=sys.stderr, flush=True)
    return result


# --------------------------------------------------------------------------- measuring


def timed(cmd: list[str], cwd: Path) -> dict:
    """Wall seconds and peak RSS (MB) of one command; its exit code and output."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as out:
        t0 = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", out.name, *cmd], cwd=cwd, env=env_for_orch(),
                              capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        rss = out.read().strip().splitlines()
    return {"s": wall, "rss_mb": int(rss[-1]) / 1024 if rss and rss[-1].isdigit() else None,
            "code": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}


def repeated(cmd: list[str], cwd: Path, repeats: int, check=None) -> dict:
    """The median wall and the largest peak RSS of ``repeats`` runs; each must exit 0 (and pass ``check``)."""
    runs = []
    for _ in range(repeats):
        r = timed(cmd, cwd)
        if r["code"] != 0 or (check and not check(r)):
            sys.stderr.write(r["stdout"][-2000:] + r["stderr"][-2000:])
            raise SystemExit(f"{shlex.join(cmd)} exited {r['code']}")
        runs.append(r)
    return {"s": statistics.median(r["s"] for r in runs), "all_s": [r["s"] for r in runs],
            "rss_mb": max((r["rss_mb"] or 0) for r in runs), "cmd": cmd}


def resume_probe(store: Store) -> float:
    """Seconds from ``orch sweep`` starting to its first new point run, on a copy of the store in
    which every other point run is marked deleted (so half the points are to run again)."""
    with tempfile.TemporaryDirectory(prefix="orch-scale-resume-") as tmp, \
            store.half_done_copy(Path(tmp)) as (uri, newest):
        cmd = orch_cmd("sweep", str(store.grid), "--workers", str(WORKERS), "--tracking-uri", uri, "--quiet")
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=tmp, env=env_for_orch(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        first = None
        while first is None and proc.poll() is None and time.perf_counter() - t0 < 600:
            if store.rows(POINT_ROWS + " WHERE r.start_time > ?", (newest,), uri=uri):
                first = time.perf_counter() - t0
            else:
                time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        if first is None:
            sys.stderr.write(err[-2000:])
            raise SystemExit(f"resume probe N={store.n}: no point started (exit {proc.returncode})")
        return first


def measure(store: Store, repeats: int, resume: bool) -> dict:
    """Each command against the finished store (the dry run also without one), as :func:`repeated`."""
    n, grid, folder, uri = store.n, str(store.grid), store.folder, store.uri
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="orch-scale-none-") as tmp:
        absent = Path(tmp) / "absent.db"
        out["dry_none"] = repeated(orch_cmd("sweep", grid, "--dry-run", "--tracking-uri", f"sqlite:///{absent}"),
                                   folder, repeats, check=lambda r: not absent.exists() and f"{n:,} points" in r["stdout"])
    out["dry_store"] = repeated(orch_cmd("sweep", grid, "--dry-run", "--tracking-uri", uri), folder, repeats,
                                check=lambda r: f"{n:,} points: {n:,} done" in r["stdout"])
    before = store.content()
    out["rerun"] = repeated(orch_cmd("sweep", grid, "--workers", str(WORKERS), "--tracking-uri", uri), folder,
                            repeats, check=lambda r: "nothing to do" in r["stderr"])
    out["rerun"]["wrote"] = {"before": before, "after": store.content()}
    if resume:
        out["resume"] = {"s": resume_probe(store)}
    out["compare"] = repeated(orch_cmd("compare", "--metric", METRIC, "--tracking-uri", uri), folder, repeats)
    out["status"] = repeated(orch_cmd("status", "--tracking-uri", uri), folder, repeats)
    return out


# where a profiled command's time goes: (label, file path ending, function)
PROFILE_PARTS = (
    ("imports", "<frozen importlib._bootstrap>", "_find_and_load"),
    ("MLflow search_runs (SqlAlchemyStore._search_runs)", "mlflow/store/tracking/sqlalchemy_store.py", "_search_runs"),
    ("… of which SQLAlchemy building ORM rows (loading._instance)", "sqlalchemy/orm/loading.py", "_instance"),
    ("… and MLflow entities from them (to_mlflow_entity)", "mlflow/store/tracking/dbmodels/models.py",
     "to_mlflow_entity"),
    ("rich drawing tables (Console.print)", "rich/console.py", "print"),
)


def profile(cmd: list[str], cwd: Path, top: int = 32) -> str:
    """``cmd`` (an orch command) once under cProfile: where its time went, and its top functions
    by cumulative and by own time."""
    import io
    import pstats

    with tempfile.TemporaryDirectory(prefix="orch-scale-prof-") as tmp:
        prof = Path(tmp) / "out.prof"
        full = [cmd[0], "-m", "cProfile", "-o", str(prof), *cmd[1:]]
        t0 = time.perf_counter()
        subprocess.run(full, cwd=cwd, env=env_for_orch(), capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        text = io.StringIO()
        stats = pstats.Stats(str(prof), stream=text)
        parts = []
        for label, path, name in PROFILE_PARTS:
            found = [(v[1], v[3]) for (f, _, fn), v in stats.stats.items() if f.endswith(path) and fn == name]
            if found:
                parts.append(f"{label}: {max(ct for _, ct in found):.2f} s ({sum(n for n, _ in found)} calls)")
        stats.sort_stats("cumulative").print_stats(top)
        stats.sort_stats("tottime").print_stats(12)
    site = str(Path(sys.prefix) / "lib")
    body = "\n".join(line.replace(site, "…").replace(str(ROOT) + "/", "")
                     for line in text.getvalue().splitlines() if line.strip())
    shown = shlex.join(["python", "-m", "cProfile", "-o", "OUT", *full[5:]])
    return (f"`{shown}`: {stats.total_tt:.2f} s under the profiler ({wall:.1f} s wall with the profiler's own cost). "
            f"Where it went: {'; '.join(parts)}.\n\n```\n{body}\n```")


# --------------------------------------------------------------------------- the table


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _cells(sizes: list[int], value, show, ratio) -> str:
    """``| a | b |`` of ``show(v)`` per N, with ``(×ratio)`` against the smallest N."""
    base, cells = value(sizes[0]), []
    for n in sizes:
        v = value(n)
        if v is None:
            cells.append("–")
            continue
        r = ratio(v, base, n, sizes[0]) if base and n != sizes[0] else None
        cells.append(show(v) + (f" (×{r:.2f})" if r is not None else ""))
    return " | ".join(cells) + " |"


def rerun_wrote(measured: dict, n: int) -> str | None:
    wrote = measured.get(n, {}).get("rerun", {}).get("wrote")
    if not wrote:
        return None
    (runs0, size0, digest0), (runs1, size1, digest1) = wrote["before"], wrote["after"]
    if (runs0, size0, digest0) == (runs1, size1, digest1):
        return "nothing (runs, size, content same)"
    return f"runs {runs0} → {runs1}, size {size0} → {size1}, content {'same' if digest0 == digest1 else 'changed'}"


def table(sizes: list[int], builds: dict[int, dict], measured: dict[int, dict], kind: str) -> str:
    """One row per operation; per N its value and, in brackets, its time per point relative to the smallest N."""
    def seconds(label, goal, value):  # seconds for N points: per point ratio = (v / n) / (base / n0)
        return f"| {label} | {goal} | " + _cells(sizes, value, lambda v: f"{v:.2f} s",
                                                 lambda v, b, n, n0: (v / n) / (b / n0))

    def per_point(label, goal, value, unit, fmt="{:.3f}"):  # already per point (or per command): plain ratio
        return f"| {label} | {goal} | " + _cells(sizes, value, lambda v: f"{fmt.format(v)} {unit}",
                                                 lambda v, b, n, n0: v / b)

    def m(op: str, key: str = "s"):
        return lambda n: measured.get(n, {}).get(op, {}).get(key)

    def b(fn):
        return lambda n: fn(builds[n]) if n in builds else None

    return "\n".join([
        "| operation | goal at 10,000 | " + " | ".join(f"N = {n:,}" for n in sizes) + " |",
        "|---|---|" + "---:|" * len(sizes),
        seconds("build: `orch sweep --workers 2`, fresh store", "–", b(lambda r: r["seconds"])),
        per_point("scheduler overhead per point (slot-s outside the entry)", "flat",
                  b(lambda r: (r["span_s"] * WORKERS - r["entry_s"]) / r["n"]), "s"),
        per_point("… of which inside the point's MLflow run", "–", b(lambda r: (r["run_s"] - r["entry_s"]) / r["n"]),
                  "s"),
        per_point("the entry's own code per point", "–", b(lambda r: r["entry_s"] / r["n"]), "s", "{:.4f}"),
        seconds("`orch sweep --dry-run`, no store", "≤ 1 s", m("dry_none")),
        seconds("`orch sweep --dry-run`, finished store", "≤ 5 s", m("dry_store")),
        seconds("rerun of the finished sweep: nothing to do", "≤ 10 s", m("rerun")),
        "| … what the rerun wrote | nothing | " + " | ".join(rerun_wrote(measured, n) or "–" for n in sizes) + " |",
        seconds("resume with half done: first new point starts", "≤ 10 s", m("resume")),
        seconds(f"`orch compare --metric {METRIC}`", "≤ 5 s", m("compare")),
        seconds("`orch status`", "≤ 5 s", m("status")),
        per_point("`orch compare` peak RSS", "grows ≤ summaries", m("compare", "rss_mb"), "MB", "{:.0f}"),
        per_point("`orch status` peak RSS", "grows ≤ summaries", m("status", "rss_mb"), "MB", "{:.0f}"),
        per_point(f"{kind} store per run", "reported", b(lambda r: r["db_bytes"] / r["n"] / 1024), "KB", "{:.1f}"),
        per_point("artifacts per run", "reported", b(lambda r: r["artifact_bytes"] / r["n"] / 1024), "KB", "{:.1f}"),
    ])


def versions() -> str:
    code = "import mlflow, sqlalchemy; print(mlflow.__version__, sqlalchemy.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    mlflow_v, sa_v = (out.stdout.split() + ["?", "?"])[:2]
    return f"MLflow {mlflow_v}, SQLAlchemy {sa_v}, SQLite {sqlite3.sqlite_version}, Python {platform.python_version()}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,10000", help="points per grid (default 100,1000,10000)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "orch-scale-cache",
                        help="where the built stores are kept between runs, one folder per N (default: "
                             "/tmp/orch-scale-cache)")
    parser.add_argument("--postgres", default=None, metavar="URL",
                        help="build and measure PostgreSQL stores instead: a server's URL without a database, e.g. "
                             "postgresql://orch@127.0.0.1:5432 (databases orch_scale_<N>, created)")
    parser.add_argument("--build-only", action="store_true", help="build (or resume building) the stores, measure "
                                                                  "nothing")
    parser.add_argument("--no-build", action="store_true", help="measure only the sizes already built")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each command (default 3; the median)")
    parser.add_argument("--no-resume", action="store_true", help="leave out the resume-with-half-done probe")
    parser.add_argument("--profile", nargs="?", const="slowest", default=None, metavar="OPS",
                        help="profile the slowest measured command at the largest N (cProfile), or these "
                             "(comma-separated: dry_none, dry_store, rerun, compare, status)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report to this file")
    args = parser.parse_args(argv)
    args.sizes = sorted(int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip())
    return args


def header(args: argparse.Namespace, kind: str) -> list[str]:
    sizes = args.sizes
    return [
        "# Scale: orch at " + ", ".join(f"{n:,}" for n in sizes) + f" points ({kind} store)",
        "",
        f"- command: `{shlex.join(['python', *sys.argv])}`",
        (f"- machine: {cpu_model()}, {os.cpu_count()} cores, shared; load average at start: "
         f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"),
        f"- {versions()}",
        f"- date: {now()}",
        (f"- stores: `orch sweep` of `benchmarks/scale_entry.py` (trains nothing; 3 steps x 3 metrics, 4 summary "
         f"metrics), settings x {SEEDS} seeds, `--workers {WORKERS}`, `ORCH_SYSTEM_METRICS_SECONDS=0`, {kind}; "
         f"cached in {args.cache}"),
        (f"- each command: a fresh `python -m orchestrator` process, median of {args.repeats}; in brackets the "
         f"time per point relative to N = {sizes[0]:,} (×1.00: grows with N; ×{sizes[0] / sizes[-1]:.2f} at "
         f"N = {sizes[-1]:,}: constant)"),
    ]


def profiles(args: argparse.Namespace, stores: dict[int, Store], measured: dict[int, dict]) -> list[str]:
    """``--profile``: the chosen commands at the largest N measured, under cProfile."""
    largest = max(measured)
    ops = {op: v for op, v in measured[largest].items() if "cmd" in v}
    chosen = [max(ops, key=lambda op: ops[op]["s"])] if args.profile == "slowest" else args.profile.split(",")
    notes = []
    for op in chosen:
        if op not in ops:
            raise SystemExit(f"--profile {op}: not a measured command; one of {', '.join(ops)}")
        print(f"  profiling {op} at N={largest}", file=sys.stderr, flush=True)
        notes += ["", f"## Profile: {op} at N = {largest:,}", "", profile(ops[op]["cmd"], stores[largest].folder)]
    return notes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_term(signum, frame):  # subprocess.run kills its child as the exception passes through it
        raise SystemExit(f"scale.py: stopped by signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    kind = "PostgreSQL" if args.postgres else "SQLite"
    top = header(args, kind)
    print("\n".join(top), flush=True)
    stores = {n: Store(args.cache, n, args.postgres) for n in args.sizes}
    builds: dict[int, dict] = {}
    for n, store in stores.items():
        if args.no_build and not (store.folder / "build.json").exists():
            print(f"  N={n}: not built (--no-build)", file=sys.stderr)
            continue
        builds[n] = build(store)
    if args.build_only:
        for n, r in builds.items():
            print(f"N={n:,}: built in {r['seconds']:.0f} s ({r['attempts']} attempt(s)), {r['finished']} points")
        return 0
    measured = {}
    for n in builds:
        print(f"  measuring N={n}", file=sys.stderr, flush=True)
        measured[n] = measure(stores[n], args.repeats, resume=not args.no_resume)
    notes = [
        "",
        f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}. Builds: "
        + "; ".join(f"N = {n:,}: {r['seconds']:.0f} s, {r['date']}, {r['attempts']} attempt(s)" for n, r in
                    builds.items()),
        "",
        "Every run's seconds: " + "; ".join(
            f"N = {n:,} {op} " + "/".join(f"{s:.2f}" for s in v.get("all_s", [v["s"]]))
            for n, ops in measured.items() for op, v in ops.items()),
    ]
    if args.profile and measured:
        notes += profiles(args, stores, measured)
    finish(top, table(args.sizes, builds, measured, kind) + "\n" + "\n".join(notes), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
