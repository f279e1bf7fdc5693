"""What ``orch ui`` costs to start and to keep running: before (plain ``mlflow ui``) and after.

* before: ``python -m mlflow ui --backend-store-uri URI --host 127.0.0.1 --port P``, the
  command ``orch ui`` exec'd into up to commit 0dc96f9 (MLflow's defaults: four uvicorn
  workers, the job runner's huey consumers);
* after: ``orch ui --tracking-uri URI --port P`` (one worker, job execution off, quiet logs;
  ``orch`` itself stays as the server's parent).

Both serve the same SQLite store, which holds one small finished sweep (made first with
``orch sweep`` on a one-point digits grid, unless ``--tracking-uri`` names a store). Per
start: start-up is the time from launch until ``GET /health`` answers 200; then the UI's
page and one experiment search are requested (what a browser tab does first), and the
resident memory of the whole process tree (the launched process and every descendant,
psutil) is sampled every 0.5 s for ``--settle`` seconds: the table shows the last sample
(settled) and the largest, as RSS summed over processes (what ``ps`` adds up; shared pages
count once per process) and as PSS (shared pages split among the processes that share
them). Medians over ``--repeats`` starts of each side, alternating. Each start is stopped
with SIGTERM to its process group, and the script checks that no process of it remains.

Usage::

    python benchmarks/ui_footprint.py                       # 2 starts per side
    python benchmarks/ui_footprint.py --repeats 3 --out benchmarks/results/ui_footprint_cpu.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import cpu_model, finish  # noqa: E402

GOAL = 3.0  # resident memory: before / after at least this
GRID = """name: ui-footprint
base:
  data: {name: digits, batch_size: 64}
  model: {depth_n: 1}
  train: {max_epochs: 1, patience: 1}
grid: {}
seeds: [0]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_store(folder: Path) -> str:
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    (folder / "grid.yaml").write_text(GRID)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "orchestrator", "sweep", str(folder / "grid.yaml"), "-q"],
                   check=True, env=env, cwd=folder, capture_output=True)
    return uri


def command(side: str, uri: str, port: int) -> list[str]:
    if side == "before":
        return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                "--port", str(port)]
    return [sys.executable, "-m", "orchestrator", "ui", "--tracking-uri", uri, "--port", str(port)]


def tree(pid: int):
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def memory(pid: int) -> tuple[float, float, int]:
    """(RSS MB summed, PSS MB summed, processes) of the tree under ``pid``."""
    import psutil

    rss = pss = 0.0
    procs = tree(pid)
    for p in procs:
        try:
            info = p.memory_full_info()
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return rss / 2**20, pss / 2**20, len(procs)


def get(url: str, body: bytes | None = None) -> int:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()
        return resp.status


def one_start(side: str, uri: str, settle: float, cwd: Path) -> dict:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(command(side, uri, port), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    startup = None
    try:
        while time.perf_counter() - t0 < 300:
            if proc.poll() is not None:
                raise RuntimeError(f"{side}: exited with {proc.returncode} before answering")
            try:
                if get(f"{base}/health") == 200:
                    startup = time.perf_counter() - t0
                    break
            except OSError:
                time.sleep(0.1)
        if startup is None:
            raise RuntimeError(f"{side}: no answer in 300 s")
        get(f"{base}/")
        get(f"{base}/ajax-api/2.0/mlflow/experiments/search", b'{"max_results": 100}')
        samples = []
        end = time.perf_counter() + settle
        while time.perf_counter() < end:
            samples.append(memory(proc.pid))
            time.sleep(0.5)
        pids = [p.pid for p in tree(proc.pid)]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    time.sleep(1.0)
    import psutil

    left = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    return {"startup": startup, "rss": samples[-1][0], "rss_peak": max(s[0] for s in samples),
            "pss": samples[-1][1], "procs": samples[-1][2], "procs_peak": max(s[2] for s in samples),
            "left": len(left), "exit": proc.returncode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="starts per side (default 2)")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds of memory samples per start (default 10)")
    parser.add_argument("--tracking-uri", default=None, help="an existing SQLite store (default: a fresh one)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report to this file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="orch-ui-bench-") as tmp:
        folder = Path(tmp)
        uri = args.tracking_uri or make_store(folder)
        load = os.getloadavg()
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        runs: dict[str, list[dict]] = {"before": [], "after": []}
        for i in range(args.repeats):
            for side in (("before", "after") if i % 2 == 0 else ("after", "before")):
                runs[side].append(one_start(side, uri, args.settle, folder))
                print(f"{side} #{len(runs[side])}: {runs[side][-1]}", file=sys.stderr, flush=True)

    def med(side: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[side])

    rows = [("start-up s (launch -> /health 200)", "startup", "{:.1f}"),
            ("processes (settled)", "procs", "{:.0f}"),
            ("processes (most seen)", "procs_peak", "{:.0f}"),
            ("RSS MB, summed over processes (settled)", "rss", "{:.0f}"),
            ("RSS MB, summed (largest sample)", "rss_peak", "{:.0f}"),
            ("PSS MB, summed (settled)", "pss", "{:.0f}")]
    lines = ["| medians over starts | before: mlflow ui | after: orch ui | before / after |", "|---|---:|---:|---:|"]
    for title, key, fmt in rows:
        b, a = med("before", key), med("after", key)
        lines.append(f"| {title} | {fmt.format(b)} | {fmt.format(a)} | {b / a:.1f}x |" if a else
                     f"| {title} | {fmt.format(b)} | {fmt.format(a)} | – |")
    ratio = med("before", "rss") / med("after", "rss")
    left = sum(r["left"] for side in runs.values() for r in side)
    lines += ["", f"**resident memory before / after (RSS summed, settled): {ratio:.1f}x** (goal >= {GOAL:.0f}x): "
                  f"{'met' if ratio >= GOAL else 'NOT met'}; processes left after SIGTERM: {left}"]
    from importlib.metadata import version

    header = ["# orch ui footprint: plain `mlflow ui` (before) vs `orch ui` (after)", "",
              f"- command: `python {shlex.join(sys.argv)}`",
              f"- machine: {cpu_model()}, {os.cpu_count()} cores; mlflow {version('mlflow')}, "
              f"Python {sys.version.split()[0]}",
              f"- date: {started} (start); "
              f"load average at start: {' '.join(f'{x:.2f}' for x in load)}",
              f"- {args.repeats} start(s) per side, alternating; memory sampled for {args.settle:.0f} s after "
              "the first page and experiment search", ""]
    print("\n".join(header), flush=True)
    finish(header, "\n".join(lines), args.out)


if __name__ == "__main__":
    main()
