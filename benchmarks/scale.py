"""Scale: orch at N = 100, 1,000 and 10,000 points, side by side, time per point relative to N = 100.

Builds real stores through orch itself: ``orch sweep`` of a trivial entry (benchmarks/scale_entry.py:
trains nothing, logs three steps of three metrics and four summary metrics) over a grid of
settings x 10 seeds, ``--workers 2``, ``ORCH_SYSTEM_METRICS_SECONDS=0``, into a SQLite store. A
finished build is cached under ``--cache DIR`` (default /tmp/orch-scale-cache), one folder per N
(``nN/``: grid, entry, store, ``build.json`` with how long the build took); a build that was stopped
is resumed by the next run (orch's own resume), its attempts' seconds summed.

Then measures against each finished store, every command a fresh ``python -m orchestrator``
process under ``/usr/bin/time`` (wall and peak RSS), the median of ``--repeats``:

- ``orch sweep GRID --dry-run`` with no store (a store path that does not exist; not created),
- ``orch sweep GRID --dry-run`` against the finished store,
- a rerun of the finished sweep (``orch sweep GRID --workers 2 --quiet``): it must say
  "nothing to do" and write nothing (run count, file size and sha256 of the store unchanged),
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
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shlex
import shutil
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

ENTRY = Path(__file__).resolve().parent / "scale_entry.py"
SEEDS = 10  # every grid: settings x 10 seeds
WORKERS = 2
METRIC = "val_acc"
POINT_ROWS = ("SELECT r.run_uuid, r.status, r.start_time, r.end_time, r.lifecycle_stage FROM runs r JOIN tags t "
              "ON t.run_uuid = r.run_uuid AND t.key = 'orch.kind' AND t.value = 'point'")
# goal at N = 10,000 (issue 30), seconds; None: shown, no goal
GOALS = {"dry_none": 1.0, "dry_store": 5.0, "rerun": 10.0, "resume": 10.0, "compare": 5.0, "status": 5.0}


def orch_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator", *args]


def env_for_orch() -> dict[str, str]:
    env = dict(os.environ, ORCH_SYSTEM_METRICS_SECONDS="0")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("MLFLOW_TRACKING_URI", None)  # every command names its store
    return env


# --------------------------------------------------------------------------- the grid and its store


def grid_axes(n: int) -> dict[str, list]:
    """``n / 10`` settings over lr x width x depth (at most 10 values each), for 10 seeds."""
    if n % SEEDS or n < SEEDS:
        raise SystemExit(f"--sizes: {n} is not a multiple of {SEEDS} (settings x {SEEDS} seeds)")
    settings = n // SEEDS
    n_lr = min(10, settings)
    n_width = min(10, settings // n_lr)
    n_depth = settings // (n_lr * n_width)
    if n_lr * n_width * n_depth != settings or n_depth > 10:
        raise SystemExit(f"--sizes: {n} points do not split into lr x width x depth x {SEEDS} seeds; use e.g. 100, "
                         "1000, 10000")
    return {"lr": [round(10 ** (-1 - i / 3), 6) for i in range(n_lr)], "width": [16 * (i + 1) for i in range(n_width)],
            "depth": list(range(1, n_depth + 1))}


def prepare(folder: Path, n: int) -> Path:
    """The folder of size ``n``: the entry beside a grid of ``n`` points; the grid file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ENTRY, folder / ENTRY.name)
    grid = folder / "grid.yaml"
    lines = [f"name: scale-{n}", f"entry: {ENTRY.stem}:main", "grid:"]
    lines += [f"  {axis}: {json.dumps(values)}" for axis, values in grid_axes(n).items()]
    lines.append(f"seeds: {json.dumps(list(range(SEEDS)))}")
    grid.write_text("\n".join(lines) + "\n")
    return grid


def uri_of(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


def ro(db: Path, sql: str, args=()) -> list:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def store_facts(folder: Path) -> dict:
    """Point runs, their span and seconds, the entry's own seconds, the store's sizes."""
    db = folder / "mlflow.db"
    rows = [r for r in ro(db, POINT_ROWS) if r[4] == "active"]
    done = [r for r in rows if r[1] == "FINISHED" and r[2] and r[3]]
    entry = ro(db, "SELECT sum(value), count(*) FROM latest_metrics WHERE key = 'entry_seconds'")[0]
    artifacts = sum(f.stat().st_size for f in (folder / "mlartifacts").rglob("*") if f.is_file()) \
        if (folder / "mlartifacts").exists() else 0
    return {"points": len(rows), "finished": len(done),
            "span_s": (max(r[3] for r in done) - min(r[2] for r in done)) / 1000 if done else 0.0,
            "run_s": sum((r[3] - r[2]) / 1000 for r in done), "entry_s": entry[0] or 0.0,
            "db_bytes": db.stat().st_size, "artifact_bytes": artifacts,
            "all_runs": ro(db, "SELECT count(*) FROM runs")[0][0]}


def build(n: int, folder: Path) -> dict:
    """The finished store of ``n`` points: from the cache, else swept now (a stopped build resumes)."""
    done_file = folder / "build.json"
    if done_file.exists():
        return json.loads(done_file.read_text())
    grid = prepare(folder, n)
    cmd = orch_cmd("sweep", str(grid), "--workers", str(WORKERS), "--tracking-uri", uri_of(folder), "--quiet")
    print(f"  build N={n}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=folder, env=env_for_orch(), capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    with open(folder / "attempts.jsonl", "a") as f:
        f.write(json.dumps({"seconds": wall, "exit": proc.returncode, "date": now()}) + "\n")
    facts = store_facts(folder) if (folder / "mlflow.db").exists() else {"finished": 0}
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


def store_state(db: Path) -> tuple:
    return ro(db, "SELECT count(*) FROM runs")[0][0], db.stat().st_size, hashlib.sha256(db.read_bytes()).hexdigest()


def resume_probe(n: int, folder: Path, grid: Path) -> float:
    """Seconds from ``orch sweep`` starting to its first new point run, on a copy of the store in
    which every other point run is marked deleted (so half the points are to run again)."""
    with tempfile.TemporaryDirectory(prefix="orch-scale-resume-") as tmp:
        db = Path(tmp) / "mlflow.db"
        shutil.copyfile(folder / "mlflow.db", db)
        con = sqlite3.connect(db)
        with con:
            ids = [r[0] for r in con.execute(POINT_ROWS + " ORDER BY r.start_time")][::2]
            con.executemany("UPDATE runs SET lifecycle_stage = 'deleted' WHERE run_uuid = ?", [(i,) for i in ids])
            con.execute("UPDATE experiments SET artifact_location = ?", (f"{tmp}/mlartifacts",))
            newest = con.execute("SELECT max(start_time) FROM runs").fetchone()[0]
        con.close()
        cmd = orch_cmd("sweep", str(grid), "--workers", str(WORKERS), "--tracking-uri", f"sqlite:///{db}", "--quiet")
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=tmp, env=env_for_orch(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        first = None
        while first is None and proc.poll() is None and time.perf_counter() - t0 < 600:
            rows = [r for r in ro(db, POINT_ROWS + " WHERE r.start_time > ?", (newest,))]
            if rows:
                first = time.perf_counter() - t0
            else:
                time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        if first is None:
            sys.stderr.write(err[-2000:])
            raise SystemExit(f"resume probe N={n}: no point started (exit {proc.returncode})")
        return first


def measure(n: int, folder: Path, repeats: int, resume: bool) -> dict:
    grid, db = folder / "grid.yaml", folder / "mlflow.db"
    uri = uri_of(folder)
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="orch-scale-none-") as tmp:
        absent = Path(tmp) / "absent.db"
        out["dry_none"] = repeated(orch_cmd("sweep", str(grid), "--dry-run", "--tracking-uri", f"sqlite:///{absent}"),
                                   folder, repeats, check=lambda r: not absent.exists() and f"{n} points" in r["stdout"])
    out["dry_store"] = repeated(orch_cmd("sweep", str(grid), "--dry-run", "--tracking-uri", uri), folder, repeats,
                                check=lambda r: f"{n} points: {n} done" in r["stdout"])
    before = store_state(db)
    out["rerun"] = repeated(orch_cmd("sweep", str(grid), "--workers", str(WORKERS), "--tracking-uri", uri, "--quiet"),
                            folder, repeats, check=lambda r: "nothing to do" in r["stderr"])
    after = store_state(db)
    out["rerun"]["wrote"] = {"runs": (before[0], after[0]), "bytes": (before[1], after[1]),
                             "same_sha256": before[2] == after[2]}
    if resume:
        out["resume"] = {"s": resume_probe(n, folder, grid)}
    out["compare"] = repeated(orch_cmd("compare", "--metric", METRIC, "--tracking-uri", uri), folder, repeats)
    out["status"] = repeated(orch_cmd("status", "--tracking-uri", uri), folder, repeats)
    return out


def profile(cmd: list[str], cwd: Path, top: int = 25) -> str:
    """``cmd`` (an orch command) once under cProfile: its top functions by cumulative and own time."""
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
        stats.strip_dirs().sort_stats("cumulative").print_stats(top)
        stats.sort_stats("tottime").print_stats(15)
    body = "\n".join(line for line in text.getvalue().splitlines() if line.strip())
    return f"`{shlex.join(['python', *full[1:3], 'OUT', *full[4:]])}` ({wall:.1f} s under the profiler)\n\n```\n{body}\n```"


# --------------------------------------------------------------------------- the table


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def table(sizes: list[int], builds: dict[int, dict], measured: dict[int, dict]) -> str:
    """One row per operation; per N its seconds and its time per point relative to the smallest N."""
    base = sizes[0]

    def seconds_row(label: str, goal: str, value) -> str:
        cells = []
        for n in sizes:
            v = value(n)
            b = value(base)
            if v is None:
                cells.append("–")
                continue
            ratio = (v / n) / (b / base) if b else None
            cells.append(f"{v:.2f} s" + (f" (×{ratio:.2f})" if ratio is not None and n != base else ""))
        return f"| {label} | {goal} | " + " | ".join(cells) + " |"

    def per_point_row(label: str, goal: str, value, unit: str, fmt: str = "{:.3f}") -> str:
        cells = []
        for n in sizes:
            v, b = value(n), value(base)
            if v is None:
                cells.append("–")
                continue
            cells.append(fmt.format(v) + f" {unit}" + (f" (×{v / b:.2f})" if b and n != base else ""))
        return f"| {label} | {goal} | " + " | ".join(cells) + " |"

    def plain_row(label: str, goal: str, value) -> str:
        return f"| {label} | {goal} | " + " | ".join(value(n) if value(n) is not None else "–" for n in sizes) + " |"

    def m(op: str, key: str = "s"):
        return lambda n: measured.get(n, {}).get(op, {}).get(key)

    def b(fn):
        return lambda n: fn(builds[n]) if n in builds else None

    def overhead(r: dict) -> float:
        return (r["span_s"] * WORKERS - r["entry_s"]) / r["n"]

    def wrote(n: int) -> str | None:
        w = measured.get(n, {}).get("rerun", {}).get("wrote")
        if not w:
            return None
        same = w["runs"][0] == w["runs"][1] and w["bytes"][0] == w["bytes"][1] and w["same_sha256"]
        return "nothing (runs, size, sha256 same)" if same else f"runs {w['runs']}, bytes {w['bytes']}, " \
                                                                f"sha256 same: {w['same_sha256']}"

    head = "| operation | goal at 10,000 | " + " | ".join(f"N = {n:,}" for n in sizes) + " |"
    rows = [
        head, "|---|---|" + "---:|" * len(sizes),
        seconds_row("build: `orch sweep --workers 2`, fresh store", "–", b(lambda r: r["seconds"])),
        per_point_row("scheduler overhead per point (slot-s outside the entry)", "flat", b(overhead), "s"),
        per_point_row("… of which inside the point's MLflow run", "–",
                      b(lambda r: (r["run_s"] - r["entry_s"]) / r["n"]), "s"),
        per_point_row("the entry's own code per point", "–", b(lambda r: r["entry_s"] / r["n"]), "s", "{:.4f}"),
        seconds_row("`orch sweep --dry-run`, no store", "≤ 1 s", m("dry_none")),
        seconds_row("`orch sweep --dry-run`, finished store", "≤ 5 s", m("dry_store")),
        seconds_row("rerun of the finished sweep: nothing to do", "≤ 10 s", m("rerun")),
        plain_row("… what the rerun wrote", "nothing", wrote),
        seconds_row("resume with half done: first new point starts", "≤ 10 s", m("resume")),
        seconds_row(f"`orch compare --metric {METRIC}`", "≤ 5 s", m("compare")),
        seconds_row("`orch status`", "≤ 5 s", m("status")),
        per_point_row("`orch compare` peak RSS", "grows ≤ summaries", m("compare", "rss_mb"), "MB", "{:.0f}"),
        per_point_row("`orch status` peak RSS", "grows ≤ summaries", m("status", "rss_mb"), "MB", "{:.0f}"),
        per_point_row("SQLite store per run", "reported", b(lambda r: r["db_bytes"] / r["n"] / 1024), "KB", "{:.1f}"),
        per_point_row("artifacts per run", "reported", b(lambda r: r["artifact_bytes"] / r["n"] / 1024), "KB",
                      "{:.1f}"),
    ]
    return "\n".join(rows)


def versions() -> str:
    code = "import mlflow, sqlalchemy; print(mlflow.__version__, sqlalchemy.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    mlflow_v, sa_v = (out.stdout.split() + ["?", "?"])[:2]
    return f"MLflow {mlflow_v}, SQLAlchemy {sa_v}, SQLite {sqlite3.sqlite_version}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,10000", help="points per grid (default 100,1000,10000)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "orch-scale-cache",
                        help="where the built stores are kept between runs, one folder per N (default: "
                             "/tmp/orch-scale-cache)")
    parser.add_argument("--build-only", action="store_true", help="build (or resume building) the stores, measure "
                                                                  "nothing")
    parser.add_argument("--no-build", action="store_true", help="measure only the sizes already built")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each command (default 3; the median)")
    parser.add_argument("--no-resume", action="store_true", help="leave out the resume-with-half-done probe")
    parser.add_argument("--profile", action="store_true",
                        help="profile the slowest measured command at the largest N (cProfile)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report to this file")
    args = parser.parse_args(argv)
    sizes = sorted(int(s.replace(",", "").replace("_", "")) for s in args.sizes.split(",") if s.strip())

    def on_term(signum, frame):
        raise SystemExit(f"scale.py: stopped by signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    header = [
        "# Scale: orch at " + ", ".join(f"{n:,}" for n in sizes) + " points",
        "",
        f"- command: `{shlex.join(['python', *sys.argv])}`",
        (f"- machine: {cpu_model()}, {os.cpu_count()} cores, shared; load average at start: "
         f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"),
        f"- {versions()}",
        f"- date: {now()}",
        (f"- stores: `orch sweep` of `benchmarks/scale_entry.py` (trains nothing; 3 steps x 3 metrics, 4 summary "
         f"metrics), settings x {SEEDS} seeds, `--workers {WORKERS}`, `ORCH_SYSTEM_METRICS_SECONDS=0`, SQLite; "
         f"cached in {args.cache}"),
        (f"- each command: a fresh `python -m orchestrator` process, median of {args.repeats}; in brackets the "
         f"time per point relative to N = {sizes[0]:,} (×1.00: grows with N; ×{sizes[0] / sizes[-1]:.2f} at "
         f"N = {sizes[-1]:,}: constant)"),
    ]
    print("\n".join(header), flush=True)
    builds: dict[int, dict] = {}
    for n in sizes:
        folder = args.cache / f"n{n}"
        if args.no_build and not (folder / "build.json").exists():
            print(f"  N={n}: not built (--no-build)", file=sys.stderr)
            continue
        builds[n] = build(n, folder)
    if args.build_only:
        for n, r in builds.items():
            print(f"N={n:,}: built in {r['seconds']:.0f} s ({r['attempts']} attempt(s)), {r['finished']} points")
        return 0
    measured = {}
    for n in builds:
        print(f"  measuring N={n}", file=sys.stderr, flush=True)
        measured[n] = measure(n, args.cache / f"n{n}", args.repeats, resume=not args.no_resume)
    body = table(sizes, builds, measured)
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
        largest = max(measured)
        ops = {op: v for op, v in measured[largest].items() if "cmd" in v}
        slowest = max(ops, key=lambda op: ops[op]["s"])
        print(f"  profiling {slowest} at N={largest}", file=sys.stderr, flush=True)
        notes += ["", f"## Profile: {slowest} at N = {largest:,}", "",
                  profile(ops[slowest]["cmd"], args.cache / f"n{largest}")]
    finish(header, body + "\n" + "\n".join(notes), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
