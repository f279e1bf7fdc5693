"""What MLflow tracking costs one run: ``run_tracked`` vs the bare training loop.

Both sides train the same configuration (``orch run``'s defaults: digits, batch 128,
at most 50 epochs with patience 5, unless ``--set`` changes them) in this one process:

* without: ``experiments.train.train(cfg, NullTracker(), device=...)`` — nothing logged,
  no artifacts built;
* with: ``orchestrator.execute.runner.run_tracked(cfg, store=<temporary SQLite store>, stop=StopFlag())``
  — the full tracked path of a sweep's point: run tags (git commit), params, dataset
  inputs, one ``log_batch`` per epoch, system metrics, checkpoints every
  ``train.checkpoint_seconds`` (default 60), summary metrics, three plots, text artifacts,
  the model, the description, the final status.

Both sides are warm: one untimed run of each comes first, so imports (mlflow,
matplotlib, mlflow.pytorch), the store's schema creation and other first-run costs are
left out; this measures what every further run of a sweep pays. Timed runs alternate
their order (without, with / with, without, ...) and the table shows medians; the ratio
is median(with) / median(without), goal <= 1.05. Each repeat's two runs are neighbours
in time, so the median of the per-repeat ratios with_i / without_i is less blurred by
a shared machine's slow drifts; the verdict takes the larger of it and the estimate
from the timed tracking calls. CPU seconds include the children's (the forked process
that draws two of the figures).

The tracked runs are instrumented by wrapping the tracker's calls (perf_counter around
each; negligible cost) so that the breakdown comes from the very runs that were timed.
The breakdown is printed when the ratio is above the goal, or always with --breakdown.

Usage::

    python benchmarks/tracking_overhead.py                 # 3 repeats, CPU
    python benchmarks/tracking_overhead.py --repeats 15 --breakdown
    python benchmarks/tracking_overhead.py --set train.max_epochs=10 --device cuda
"""

from __future__ import annotations

import datetime
import functools
import os
import platform
import shlex
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import cpu_model, finish, run_parser  # noqa: E402
sys.path.insert(0, str(ROOT))

GOAL = 1.05



def cpu_seconds() -> float:
    """CPU time of this process and of its reaped children (the figure child of each run)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def header(title: str) -> list[str]:
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    try:
        from importlib.metadata import version

        mlflow_version = version("mlflow")
    except Exception:  # noqa: BLE001 - a header line, never a failure
        mlflow_version = "?"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"# {title}",
        "",
        f"- command: `{' '.join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])}`",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; GPU: {gpu}",
        f"- torch {torch.__version__}, mlflow {mlflow_version}, Python {platform.python_version()}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}; "
        f"load average at start: {load}",
    ]


class Timings:
    """Seconds per named call, per tracked run."""

    def __init__(self) -> None:
        self.runs: list[dict[str, list[float]]] = []
        self.active: dict[str, list[float]] | None = None

    def begin(self) -> None:
        self.active = defaultdict(list)

    def end(self) -> None:
        if self.active is not None:
            self.runs.append(dict(self.active))
        self.active = None

    def add(self, name: str, seconds: float) -> None:
        if self.active is not None:
            self.active[name].append(seconds)


def instrument(timings: Timings) -> None:
    """Wrap the tracking calls that ``run_tracked`` and ``train`` make (module attributes, looked up at call time)."""
    import experiments.plots
    from orchestrator.store import artifacts as run_artifacts
    from orchestrator.store import provenance
    from orchestrator.store import run_tracker
    from orchestrator.store import tracking

    def wrap(owner: Any, attr: str, name: str) -> None:
        original: Callable[..., Any] = getattr(owner, attr)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                timings.add(name, time.perf_counter() - t0)

        setattr(owner, attr, timed)

    import matplotlib.figure

    owners = {"tracking": tracking, "TrackingStore": tracking.TrackingStore, "MlflowTracker": run_tracker.MlflowTracker,
              "SystemMetrics": run_tracker.SystemMetrics, "run_artifacts": run_artifacts,
              "provenance": provenance,
              "plots": experiments.plots, "Figure": matplotlib.figure.Figure,
              "ChildDrawing": __import__("orchestrator.store.figure_child", fromlist=["x"]).ChildDrawing,
              "RunCheckpoints": __import__("orchestrator.store.checkpoints", fromlist=["x"]).RunCheckpoints}
    for owner, attr, name in CALLS:
        wrap(owners[owner], attr, name)


THREAD_GROUPS = (("MainThread", "main thread (training, log_epoch)"),
                 ("MLflow", "MLflow's logging threads"),
                 ("SystemMetricsMonitor", "system-metrics thread"))
OTHER_THREADS = "other threads (torch's OpenMP workers, ...)"


def thread_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds of each thread of this process (Linux /proc), by native id, with its group."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else ():
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        name = names.get(int(tid), "")
        group = next((label for prefix, label in THREAD_GROUPS if name.startswith(prefix)), OTHER_THREADS)
        out[int(tid)] = (group, (int(fields[11]) + int(fields[12])) / tick)
    return out


class EpochLoop:
    """An ``on_epoch`` hook: wall time and each thread group's CPU from the end of epoch 1 to the
    end of the last epoch, i.e. while the model trains and nothing but per-epoch logging runs."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, dict[int, tuple[str, float]]]] = []

    def __call__(self, epoch: int, values: Any) -> None:  # noqa: ARG002
        self.marks.append((time.perf_counter(), thread_cpu()))

    def result(self) -> dict:
        if len(self.marks) < 2:
            return {}
        (w0, first), (w1, last) = self.marks[0], self.marks[-1]
        cpu: dict[str, float] = defaultdict(float)
        for tid, (group, seconds) in last.items():
            cpu[group] += seconds - first.get(tid, (group, 0.0))[1]
        return {"loop_wall": w1 - w0, **{f"cpu:{g}": v for g, v in cpu.items()}}


def sampling_cost(uri: str, run_id: str, n: int = 10) -> dict:
    """Wall and CPU seconds of one system-metrics sample (collect, aggregate, write) on ``run_id``."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=1, tracking_uri=uri)
    walls, cpus = [], []
    for _ in range(n):
        w0, c0 = time.perf_counter(), time.thread_time()
        monitor.collect_metrics()
        monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.thread_time() - c0)
    return {"wall": statistics.median(walls), "cpu": statistics.median(cpus), "n": n}


# (owner, attribute, row name), in the order of the breakdown table. Rows indented by two
# spaces run inside _log_artifacts, by four inside the row above them; unindented rows do
# not overlap one another.
CALLS = [
    ("tracking", "runtime_tags", "runtime_tags (host, torch)"),
    ("TrackingStore", "start_run", "start_run (create_run + params)"),
    ("provenance", "record", "provenance.record (git, packages, tags + 1-2 artifacts)"),
    ("MlflowTracker", "__init__", "MlflowTracker() (client)"),
    ("SystemMetrics", "__enter__", "system metrics: monitor start"),
    ("MlflowTracker", "log_data", "log_data (dataset inputs)"),
    ("MlflowTracker", "log_epoch", "log_epoch (log_batch per epoch)"),
    ("RunCheckpoints", "save", "RunCheckpoints.save (checkpoint + artifact + tags)"),
    ("MlflowTracker", "log_summary", "log_summary (log_batch)"),
    ("run_artifacts", "log_run_artifacts", "_log_artifacts (all artifacts)"),
    ("plots", "curves", "  plots.* (building 3 figures)"),
    ("plots", "quantiles", "  plots.* (building 3 figures)"),
    ("plots", "confusion_matrix", "  plots.* (building 3 figures)"),
    ("ChildDrawing", "start", "  figure child: fork (it draws curves + quantiles)"),
    ("MlflowTracker", "log_figure", "  log_figure (confusion PNG: savefig + artifact copy)"),
    ("Figure", "savefig", "    Figure.savefig (rendering a PNG in this process)"),
    ("MlflowTracker", "log_text", "  log_text (config, csv, json)"),
    ("MlflowTracker", "log_model", "  log_model (mlflow.pytorch.save_model + upload)"),
    ("ChildDrawing", "files", "  figure child: wait for its 2 PNGs"),
    ("MlflowTracker", "log_file", "  log_file (the child's 2 PNGs)"),
    ("SystemMetrics", "__exit__", "system metrics: monitor stop + last sample"),
    ("TrackingStore", "set_note", "set_note (description)"),
    ("TrackingStore", "end_run", "end_run (set_terminated)"),
]


def _quartiles(values: list[float]) -> str:
    if len(values) < 2:
        return "-"
    q1, _, q3 = statistics.quantiles(values, n=4)
    return f"{q1:.3f} to {q3:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = run_parser(__doc__)
    parser.add_argument("--breakdown", action="store_true", help="print the breakdown even when within the goal")
    parser.add_argument("--out", type=Path, default=None, help="also write the report to this file")
    args = parser.parse_args(argv)

    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("mlflow").setLevel(logging.ERROR)

    from experiments.config import load
    from experiments.train import NullTracker, train
    from orchestrator.store import tracking
    from orchestrator.store.checkpoints import StopFlag
    from orchestrator.execute.runner import run_tracked

    cfg = load(None, args.overrides)
    lines = header("Tracking overhead: one run with MLflow logging vs without")
    lines.append(f"- config: orch run defaults{' + ' + ' '.join(args.overrides) if args.overrides else ''} "
                 f"(data {cfg.data.name}, batch {cfg.data.batch_size}, max_epochs {cfg.train.max_epochs}, "
                 f"patience {cfg.train.patience}), device {args.device}")
    lines.append(f"- without: train(cfg, NullTracker()); with: run_tracked(cfg, store=sqlite temp store, quiet=True, "
                 f"stop=StopFlag()): checkpoints every {cfg.train.checkpoint_seconds:g} s, "
                 f"system metrics every {os.environ.get('ORCH_SYSTEM_METRICS_SECONDS', '10')} s "
                 "(ORCH_SYSTEM_METRICS_SECONDS); "
                 f"same process, one untimed warm-up of each first, then {args.repeats} timed runs per side "
                 "in alternating order; medians")
    print("\n".join(lines), flush=True)

    import mlflow  # noqa: F401 - imported here so that its loggers can be quietened

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.ERROR)

    timings = Timings()
    instrument(timings)
    with tempfile.TemporaryDirectory(prefix="orch-overhead-") as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        store = tracking.TrackingStore(uri)
        exp_id = store.ensure_experiment("tracking-overhead")

        def without() -> dict:
            loop = EpochLoop()
            w0, c0 = time.perf_counter(), cpu_seconds()
            result = train(cfg, NullTracker(), device=args.device, on_epoch=loop)
            return {"wall": time.perf_counter() - w0, "cpu": cpu_seconds() - c0, **result.summary,
                    **loop.result()}

        def with_tracking() -> dict:
            timings.begin()
            loop = EpochLoop()
            w0, c0 = time.perf_counter(), cpu_seconds()
            code, run_id, summary = run_tracked(cfg, store=store, experiment_id=exp_id, run_name="overhead",
                                           device=args.device, quiet=True, stop=StopFlag(), on_epoch=loop)
            wall, cpu = time.perf_counter() - w0, cpu_seconds() - c0
            timings.end()
            if code != 0:
                raise SystemExit(f"the tracked run failed (exit {code}); see the store {uri}")
            return {"wall": wall, "cpu": cpu, "run_id": run_id, **summary, **loop.result()}

        print("warm-up (untimed): without, with ...", file=sys.stderr, flush=True)
        without()
        with_tracking()
        timings.runs.clear()

        results: dict[str, list[dict]] = {"without": [], "with": []}
        for i in range(args.repeats):
            order = [("without", without), ("with", with_tracking)]
            if i % 2:
                order.reverse()
            for side, fn in order:
                r = fn()
                results[side].append(r)
                print(f"  repeat {i + 1}/{args.repeats} {side:>7}: {r['wall']:.2f} s wall, {r['cpu']:.2f} s cpu "
                      f"({r.get('epochs_run', 0):.0f} epochs)", file=sys.stderr, flush=True)
        sample = sampling_cost(uri, results["with"][-1]["run_id"])

    def med(side: str, key: str) -> float:
        return statistics.median(r.get(key, float("nan")) for r in results[side])

    def least(side: str, key: str) -> float:
        return min(r[key] for r in results[side])

    ratio = med("with", "wall") / med("without", "wall")
    min_ratio = least("with", "wall") / least("without", "wall")
    pairs = [w["wall"] / wo["wall"] for w, wo in zip(results["with"], results["without"])]
    pair_ratio = statistics.median(pairs)
    loop_pairs = [w["loop_wall"] / wo["loop_wall"] for w, wo in zip(results["with"], results["without"])
                  if w.get("loop_wall") and wo.get("loop_wall")]
    cpu_ratio = med("with", "cpu") / med("without", "cpu")
    out = ["", "| side | wall s (median) | wall s (min) | wall s, every run | process CPU s (median) | epochs | "
               "epoch loop s (median) |", "|---|---:|---:|---|---:|---:|---:|"]
    for side in ("without", "with"):
        every = ", ".join(f"{r['wall']:.2f}" for r in results[side])
        out.append(f"| {side} | {med(side, 'wall'):.2f} | {least(side, 'wall'):.2f} | {every} | "
                   f"{med(side, 'cpu'):.2f} | {med(side, 'epochs_run'):.0f} | {med(side, 'train_seconds'):.2f} |")

    # The epoch loop by thread: what runs beside training in the tracked run, and what it costs
    groups = [label for _, label in THREAD_GROUPS] + [OTHER_THREADS]
    out += ["", "The epoch loop (end of epoch 1 to end of the last epoch), wall and CPU seconds per thread group, "
                "medians:", "", "| side | loop wall s | " + " | ".join(f"{g} CPU s" for g in groups) + " |",
            "|---|---:|" + "---:|" * len(groups)]
    for side in ("without", "with"):
        out.append(f"| {side} | {med(side, 'loop_wall'):.2f} | "
                   + " | ".join(f"{med(side, 'cpu:' + g):.2f}" if any('cpu:' + g in r for r in results[side])
                                else "–" for g in groups) + " |")
    if loop_pairs:
        out += ["", f"Epoch loop, median of the per-repeat ratios with / without: {statistics.median(loop_pairs):.3f} "
                    f"(quartiles {_quartiles(loop_pairs)})."]

    # The tracking calls themselves, summed per run: an estimate that training-time noise does not blur.
    names = list(dict.fromkeys(name for _, _, name in CALLS))
    per_run_calls = [sum(sum(run.get(n, [])) for n in names if not n.startswith("  ")) for run in timings.runs]
    instrumented = statistics.median(per_run_calls) if per_run_calls else 0.0
    base = least("without", "wall")  # the least disturbed estimate of the bare run
    # System metrics are sampled on a thread of their own while the run trains: its cost is
    # one sample's time times the samples of a run (one more at the end is in the __exit__ row).
    interval = float(os.environ.get("ORCH_SYSTEM_METRICS_SECONDS", "10"))
    n_samples = int(least("with", "wall") // interval) if interval > 0 else 0
    sampling = n_samples * sample["wall"]
    est_ratio = (base + instrumented + sampling) / base
    overhead = med("with", "wall") - med("without", "wall")
    verdict = "within goal" if max(pair_ratio, est_ratio) <= GOAL else "ABOVE goal"
    out += [
        "",
        f"**ratio with / without (wall, medians): {ratio:.3f}**  (goal <= {GOAL}); "
        f"difference of medians {overhead:+.2f} s per run",
        f"- **median of the per-repeat ratios (each repeat's two runs side by side in time): {pair_ratio:.3f}** "
        f"(quartiles {_quartiles(pairs)})",
        f"- ratio of the fastest runs: {min_ratio:.3f} (the minimum of each side: the least disturbed runs, "
        f"but one outlier decides it); process CPU time ratio (medians, children included): {cpu_ratio:.3f}",
        f"- time inside the tracking calls: {instrumented:.2f} s per run (median) -> "
        f"estimated ratio (fastest without + tracking calls + system-metrics samples) / fastest without = "
        f"{est_ratio:.3f}",
        f"- system metrics every {interval:g} s on MLflow's monitor thread: one sample (collect + write) "
        f"takes {1000 * sample['wall']:.1f} ms wall, {1000 * sample['cpu']:.1f} ms CPU (median of "
        f"{sample['n']}); {n_samples} sample(s) in the fastest tracked run = {sampling:.3f} s",
        "- verdict, on the larger of the median per-repeat ratio and the estimate: "
        f"**{verdict}**",
    ]

    if max(min_ratio, est_ratio) > GOAL or args.breakdown:
        n_epochs = med("with", "epochs_run")
        out += ["", "Where the tracked run's extra time goes "
                    f"(medians over the {len(timings.runs)} timed tracked runs; "
                    "rows indented once are parts of _log_artifacts, twice parts of the row above):", "",
                "| call | calls/run | s per run | ms per call (median) | ms per call (max) | share of tracking time |",
                "|---|---:|---:|---:|---:|---:|"]
        for name in names:
            per_run = [sum(run.get(name, [])) for run in timings.runs]
            calls = [len(run.get(name, [])) for run in timings.runs]
            per_call = [s for run in timings.runs for s in run.get(name, [])]
            if not per_call:
                continue
            s_run = statistics.median(per_run)
            share = f"{100 * s_run / instrumented:.0f}%" if instrumented > 0 else "-"
            out.append(f"| {name} | {statistics.median(calls):.0f} | {s_run:.3f} | "
                       f"{1000 * statistics.median(per_call):.1f} | {1000 * max(per_call):.1f} | {share} |")
        inner = sum(statistics.median([sum(run.get(n, [])) for run in timings.runs]) for n in names
                    if n.startswith("  ") and not n.startswith("    "))
        outer = statistics.median([sum(run.get("_log_artifacts (all artifacts)", [])) for run in timings.runs])
        out.append("|   rest of _log_artifacts (confusion counts, csv/json building, temporary folder) | | "
                   f"{outer - inner:.3f} | | | |")
        out.append(f"| **all tracking calls** | | **{instrumented:.3f}** | | | 100% |")
        out += ["", f"({n_epochs:.0f} epochs per run; log_epoch runs inside the epoch loop, so it is also counted in "
                    "'epoch loop s'. Not wrapped, so not in the rows: run_key/to_flat/device label in run_tracked, "
                    "a few ms.)"]
    finish(lines, "\n".join(out), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
