"""Parallel sweeps: one grid run with more slots vs one slot, side by side.

CPU mode (default): ``orch sweep GRID --workers 1`` vs ``--workers N`` (default 2); the
workers divide the cores among them (torch threads = cores // workers).
GPU mode (``--gpu``): ``--gpus 0 --runs-per-gpu 1`` vs ``--runs-per-gpu K`` (default 4)
with ``--device cuda``: several runs packed on one GPU, each its own process.
``--processes``: the same sweep (CPU workers, or ``--gpu`` with ``--runs-per-gpu K``) with
``ORCH_POINTS_PER_PROCESS=1`` (a fresh process per point) vs the default (each slot's
process runs point after point).

Each side is one subprocess ``python -m orchestrator sweep GRID ... --quiet`` into a fresh
temporary SQLite MLflow store, so nothing is resumed and both do the whole grid. The
table shows each side's wall time (process start to exit, scheduler and MLflow included),
the runs that finished, the median wall time of one point (its MLflow run's start to end),
the overhead per point = (wall × slots − seconds inside point runs) / points (what a point
costs beyond its own run: process start, imports, scheduling), the point runs' seconds in
start order (with ``train.compile=true`` the first point of a process pays the compile
warm-up), and the speedup = wall(side 1) / wall(side 2). With --repeats > 1 the order of the sides
alternates and the table shows medians.

Datasets that are decoded once into a cache (data.name=imagefolder, under $ORCH_CACHE_DIR
or ~/.cache/orch) should be warm before timing: run one ``orch run`` on the same tree first
(benchmarks/gpu_run.sh does), otherwise the first points of each side pay the decode.

Usage::

    python benchmarks/sweep_parallel.py                                # demo grid, 1 vs 2 CPU workers
    python benchmarks/sweep_parallel.py --set train.max_epochs=2       # shorter
    python benchmarks/sweep_parallel.py --out benchmarks/results/sweep_parallel_cpu.md
    python benchmarks/sweep_parallel.py --processes --workers 1        # a process per point vs long-lived
    python benchmarks/sweep_parallel.py --processes --workers 1 --grid benchmarks/compile_seeds.yaml  # compile warm-up
    # on a GPU machine: a small CIFAR grid, 1 vs 4 runs packed on GPU 0
    python3 benchmarks/sweep_parallel.py --gpu --runs-per-gpu 4 --grid /tmp/cifar_small.yaml \\
        --set data.root=/tmp/cifar10 --set train.max_epochs=2
"""

from __future__ import annotations

import argparse
import datetime
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

from _report import cpu_model, finish  # noqa: E402



def gpu_name() -> str:
    """The first GPU's name from nvidia-smi (no torch import in this process), or 'none'."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return "none"
    names = [n.strip() for n in out.stdout.splitlines() if n.strip()]
    return f"{names[0]} (x{len(names)})" if names else "none"


def torch_version(python: str, env: dict[str, str]) -> str:
    out = subprocess.run([python, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True,
                         env=env, cwd=ROOT)
    return out.stdout.strip() or "?"


def store_stats(db: Path) -> dict:
    """Point runs FINISHED and in all, the finished runs' seconds in start order, their median and sum."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT r.status, r.start_time, r.end_time FROM runs r JOIN tags t "
            "ON t.run_uuid = r.run_uuid AND t.key = 'orch.kind' AND t.value = 'point' ORDER BY r.start_time"
        ).fetchall()
    finally:
        con.close()
    done = [(end - start) / 1000 for status, start, end in rows if status == "FINISHED" and end and start]
    return {"finished": len(done), "total": len(rows), "runs": done,
            "point_s": statistics.median(done) if done else None, "points_sum": sum(done)}


def slots_of(cmd_tail: list[str]) -> int:
    """How many points the side runs at once (--workers N, or --runs-per-gpu K on one GPU)."""
    for flag in ("--runs-per-gpu", "--workers"):
        if flag in cmd_tail:
            return int(cmd_tail[cmd_tail.index(flag) + 1])
    return 1


def run_side(label: str, cmd_tail: list[str], args: argparse.Namespace, env: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="orch-sweep-bench-") as tmp:
        db = Path(tmp) / "mlflow.db"
        cmd = [args.python, "-m", "orchestrator", "sweep", str(args.grid), *cmd_tail,
               "--tracking-uri", f"sqlite:///{db}", "--quiet"]
        for item in args.overrides:
            cmd += ["--set", item]
        print(f"  {label}: {' '.join(shlex.quote(c) for c in cmd)}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode not in (0, 1):
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
            raise SystemExit(f"{label}: orch sweep exited {proc.returncode}")
        stats = store_stats(db) if db.exists() else {"finished": 0, "total": 0, "runs": [], "point_s": None,
                                                      "points_sum": 0.0}
    print(f"  {label}: {wall:.1f} s, {stats['finished']}/{stats['total']} points finished (exit {proc.returncode})",
          file=sys.stderr, flush=True)
    if proc.returncode == 1:
        sys.stderr.write(proc.stderr[-2000:])
    overhead = (wall * slots_of(cmd_tail) - stats["points_sum"]) / stats["total"] if stats["total"] else None
    return {"wall": wall, "code": proc.returncode, "overhead": overhead, **stats}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=Path, default=ROOT / "experiments" / "grids" / "demo.yaml",
                        help="grid file (default: experiments/grids/demo.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="passed through to orch sweep --set (repeatable), e.g. train.max_epochs=2")
    parser.add_argument("--workers", type=int, default=2, help="CPU mode: workers of the parallel side (default 2)")
    parser.add_argument("--gpu", action="store_true",
                        help="GPU mode: --gpus 0 --runs-per-gpu 1 vs --runs-per-gpu K, --device cuda")
    parser.add_argument("--runs-per-gpu", type=int, default=4, help="GPU mode: K of the packed side (default 4)")
    parser.add_argument("--processes", action="store_true",
                        help="compare the same sweep with a process per point (ORCH_POINTS_PER_PROCESS=1) and with "
                             "long-lived processes (the default); "
                             "--workers / --gpu --runs-per-gpu choose the sweep")
    parser.add_argument("--repeats", type=int, default=1, help="sweeps per side, alternating order (default 1)")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the sweeps (default: this one)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--out", type=Path, default=None, help="also write the report to this file")
    args = parser.parse_args(argv)
    args.grid = args.grid.resolve()

    def on_term(signum, frame):  # noqa: ARG001 - e.g. `timeout` ran out
        # subprocess.run kills the running sweep when an exception passes through it, and the
        # sweep's points die with it (PR_SET_PDEATHSIG): nothing is left running on the device.
        raise SystemExit(f"sweep_parallel.py: stopped by signal {signum}")

    signal.signal(signal.SIGTERM, on_term)

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    extra_env: dict[str, dict[str, str]] = {}
    if args.processes:
        # The same sweep with a fresh process per point and with long-lived slot processes.
        tail = (["--gpus", "0", "--runs-per-gpu", str(args.runs_per_gpu), "--device", "cuda"] if args.gpu
                else ["--workers", str(args.workers), "--device", "cpu"])
        sides = [("a process per point", tail), ("long-lived processes", tail)]
        extra_env = {"a process per point": {"ORCH_POINTS_PER_PROCESS": "1"}, "long-lived processes": {}}
    elif args.gpu:
        sides = [("1 run per GPU", ["--gpus", "0", "--runs-per-gpu", "1", "--device", "cuda"]),
                 (f"{args.runs_per_gpu} runs per GPU",
                  ["--gpus", "0", "--runs-per-gpu", str(args.runs_per_gpu), "--device", "cuda"])]
    else:
        sides = [("1 worker", ["--workers", "1", "--device", "cpu"]),
                 (f"{args.workers} workers", ["--workers", str(args.workers), "--device", "cpu"])]

    if args.dry_run:
        for label, tail in sides:
            cmd = [args.python, "-m", "orchestrator", "sweep", str(args.grid), *tail,
                   "--tracking-uri", "sqlite:///TMP/mlflow.db", "--quiet"]
            for item in args.overrides:
                cmd += ["--set", item]
            print(f"{label}: {' '.join(shlex.quote(c) for c in cmd)}")
        return 0

    mode = "GPU" if args.gpu else "CPU"
    lines = [
        f"# Sweep parallelism ({mode}): {sides[0][0]} vs {sides[1][0]}",
        "",
        f"- command: `{' '.join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])}`",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores; GPU: {gpu_name()}",
        f"- torch {torch_version(args.python, env)}, Python {platform.python_version()}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}; "
        f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"- grid: {args.grid.relative_to(ROOT) if args.grid.is_relative_to(ROOT) else args.grid}"
        f"{'  --set ' + ' --set '.join(args.overrides) if args.overrides else ''}; "
        "each side: `python -m orchestrator sweep … --quiet` into a fresh temporary SQLite store",
    ]
    print("\n".join(lines), flush=True)

    results: dict[str, list[dict]] = {label: [] for label, _ in sides}
    for i in range(args.repeats):
        order = sides if i % 2 == 0 else sides[::-1]
        for label, tail in order:
            results[label].append(run_side(label, tail, args, {**env, **extra_env.get(label, {})}))

    def med(label: str, key: str) -> float | None:
        values = [r[key] for r in results[label] if r[key] is not None]
        return statistics.median(values) if values else None

    out = ["", "| side | wall s (median) | wall s, every sweep | points finished | s per point run (median) | "
               "s in point runs, summed | overhead per point, s | point runs, s (start order, last sweep) |",
           "|---|---:|---|---:|---:|---:|---:|---|"]
    for label, _ in sides:
        point = med(label, "point_s")
        every = ", ".join(f"{r['wall']:.1f}" for r in results[label])
        done = results[label][-1]
        runs = ", ".join(f"{x:.1f}" for x in done["runs"])
        out.append(f"| {label} | {med(label, 'wall'):.1f} | {every} | {done['finished']}/{done['total']} | "
                   f"{'-' if point is None else f'{point:.1f}'} | {med(label, 'points_sum'):.1f} | "
                   f"{med(label, 'overhead'):.2f} | {runs} |")
    speedup = med(sides[0][0], "wall") / med(sides[1][0], "wall")
    out += ["", f"**speedup = wall({sides[0][0]}) / wall({sides[1][0]}): {speedup:.2f}x**", "",
            "(s per point run: the point's MLflow run, start to end: training, evaluation, logging. Overhead per "
            "point = (wall × slots − s in point runs) / points: process start-up (python, torch, mlflow imports), "
            "the scheduler and idle slots at the end of the grid.)"]
    if any(r["code"] != 0 for rs in results.values() for r in rs):
        out.append("- WARNING: some sweep had failed points (exit 1); its time is not comparable")
    finish(lines, "\n".join(out), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
