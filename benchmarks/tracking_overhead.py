"""What MLflow tracking costs a run of the study: (a) per epoch, as a fraction of the epoch,
and (b) once per run.

The run is the study's CIFAR-10 configuration (``experiments/grids/seed_norms.yaml`` with
``model.norm=bn_torch``, batch 128, seed 0: ResNet-14, SGD, float32) for ``--epochs``
epochs, trained twice in this one process after an untimed warm-up:

* without tracking: ``experiments.train.train(cfg, NullTracker())``;
* with tracking: ``orchestrator.execute.runner.run_tracked(STUDY, cfg, store=<temporary SQLite
  store>, stop=StopFlag(), claim={})``, the path of a sweep's point: the study's
  ``train(cfg, run)`` (``experiments/study_run.py``) on the runner's ``Run``: the run with its
  params and tags, provenance, dataset inputs, one ``run.log`` per epoch, ``run.should_stop``
  after every batch, ``run.save_checkpoint`` at every epoch end (written every
  ``train.checkpoint_seconds``, 60, after a claim check), system metrics every
  ``ORCH_SYSTEM_METRICS_SECONDS`` (10), the artifact files (three figures, three text files,
  the model) and their upload, the summary, the description and the final status.

(a) Tracking per epoch: the tracking calls made while the epochs run, per epoch, plus the
CPU time of MLflow's own threads in an epoch (the asynchronous metric writes, the
system-metrics samples), as a fraction of the epoch without tracking. Goal <= 1%.
(b) Fixed per run: the tracking calls made once per run. Goal <= 0.5 s.

Both are timed around the tracking calls themselves (the functions of :data:`CALLS`,
wrapped), in the timed run: on a shared CPU the epochs of two runs differ by more than 1%
from noise alone, so the side-by-side epoch and run times are shown, but the verdicts rest
on the timed calls. A call made inside another timed call counts in its caller's row only
(the indented rows show such parts). Each is given in wall seconds and in CPU seconds (of
the calling thread; of this process for an epoch): where other work shares the cores, wall
times include waiting for one, CPU times do not.

The data is ``--root`` (train/ and test/ of class folders), else
``../shared/data/cifar10-jpeg.tar.xz`` extracted to a temporary folder (never into the
repository; its decode cache lives there too). ``--images-per-class N`` keeps the first N
training images of each class (and N/5 test images), validation being the same fifth of
training as the study's 10,000 of 50,000: a shorter epoch, so a larger fraction (a)
than on the full tree, whose epochs are longer while the per-epoch calls are not.

Usage::

    python benchmarks/tracking_overhead.py                          # the full tree: long epochs on a CPU
    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/tracking_overhead.py --images-per-class 300 --epochs 3 \\
        --out benchmarks/results/tracking_overhead_<machine>_cpu.md
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import shlex
import statistics
import sys
import tarfile
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import cpu_model, finish  # noqa: E402

# ../shared/data/ beside the checkout (or beside a folder above it, for a git worktree)
TARBALL = next((p / "shared" / "data" / "cifar10-jpeg.tar.xz" for p in ROOT.parents
                if (p / "shared" / "data" / "cifar10-jpeg.tar.xz").exists()),
               ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.xz")
EPOCH_GOAL = 0.01  # (a): tracking per epoch / epoch
RUN_GOAL = 0.5  # (b): seconds of tracking once per run
STUDY = ["model.norm=bn_torch", "data.batch_size=128", "seed=0"]
BACKGROUND = ("MLflow", "SystemMetricsMonitor")  # name prefixes of MLflow's writer and monitor threads

# (owner, attribute, row, group): "epoch" rows run while the epochs do, "run" rows once per run;
# these count the calls made outside every other timed call. "part" rows count the calls made
# inside another timed one (shown, not added again); a function may have a row of each kind.
CALLS = [
    ("tracking", "runtime_tags", "runtime tags (versions, git commit)", "run"),
    ("TrackingStore", "start_run", "create the run (tags) + params (one log_batch)", "run"),
    ("provenance", "record", "provenance (git state, environment.txt)", "run"),
    ("SystemMetrics", "__enter__", "system metrics: start the monitor", "run"),
    ("study_run", "log_datasets", "dataset inputs (one log_inputs)", "run"),
    ("Run", "log", "run.log (one asynchronous log_batch)", "epoch"),
    ("TrackingStore", "log_metrics", "  the asynchronous log_batch", "part"),
    ("Run", "should_stop", "run.should_stop (after every batch)", "epoch"),
    ("Run", "save_checkpoint", "run.save_checkpoint (every epoch end; written when due)", "epoch"),
    ("checkpoints", "envelope", "  pickle the state (every epoch end)", "part"),
    ("Fence", "check", "  claim check (get_run): before a checkpoint, in run.log every 5 s", "part"),
    ("checkpoints", "write", "  write the checkpoint (upload + one log_batch of tags)", "part"),
    ("study_run", "write_artifacts", "artifact files: figures, text, model", "run"),
    ("plots", "curves", "  the three figures: build", "part"),
    ("plots", "quantiles", "  the three figures: build", "part"),
    ("plots", "confusion_matrix", "  the three figures: build", "part"),
    ("Figure", "savefig", "  the three figures: draw + PNG", "part"),
    ("study_run", "save_model", "  the model (mlflow.pytorch.save_model)", "part"),
    ("SystemMetrics", "__exit__", "system metrics: stop + last sample", "run"),
    ("Run", "finish", "wait for the epochs' metric writes (run.finish)", "run"),
    ("TrackingStore", "log_artifacts", "upload the artifact files", "run"),
    ("Fence", "check", "claim check before the run ends (get_run)", "run"),
    ("TrackingStore", "log_metrics", "summary (one log_batch)", "run"),
    ("TrackingStore", "get_run", "does the run hold a checkpoint? (get_run)", "run"),
    ("checkpoints", "remove", "drop the run's checkpoints", "run"),
    ("TrackingStore", "set_note", "description", "run"),
    ("TrackingStore", "end_run", "end the run", "run"),
]
ROWS = list(dict.fromkeys((row, group) for _, _, row, group in CALLS))  # a row may time several functions


def header(title: str) -> list[str]:
    """The report's title and the lines that say how, where and when it was measured (also
    used by checkpoint_cost.py)."""
    import torch
    from importlib.metadata import version

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"# {title}",
        "",
        f"- command: `{' '.join(f'{k}={os.environ[k]}' for k in ('OMP_NUM_THREADS',) if k in os.environ)} "
        f"{' '.join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])}`".replace("` ", "`"),
        f"- machine: {cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; GPU: {gpu}",
        f"- torch {torch.__version__}, mlflow {version('mlflow')}, Python {platform.python_version()}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}; "
        f"load average at start: {load}",
    ]


def data_root(args: argparse.Namespace, tmp: Path) -> Path:
    """The JPEG tree: --root, else the shared tarball extracted under ``tmp``; with
    --images-per-class, a tree of links to the first images of each class."""
    if args.root:
        root = Path(args.root).expanduser()
    elif TARBALL.is_file():
        with tarfile.open(TARBALL) as tar:
            tar.extractall(tmp, filter="data")
        root = tmp / "cifar10"
    else:
        sys.exit(f"no --root given and {TARBALL} is absent; pass --root DIR (train/ and test/ inside)")
    if not args.images_per_class:
        return root
    subset = tmp / "subset"
    for split, keep in (("train", args.images_per_class), ("test", max(1, args.images_per_class // 5))):
        for folder in sorted((root / split).iterdir()):
            (subset / split / folder.name).mkdir(parents=True)
            for image in sorted(folder.iterdir())[:keep]:
                (subset / split / folder.name / image.name).symlink_to(image)
    return subset


def study_config(root: Path, args: argparse.Namespace) -> Any:
    """The study's run (seed_norms.yaml, bn_torch, batch 128, seed 0) on ``root``, for --epochs epochs."""
    from orchestrator.grid.load import load_grid

    epochs = max(2, args.epochs)
    overrides = [*STUDY, f"data.root={root}", f"train.max_epochs={epochs}", f"train.patience={epochs}",
                 *(["data.val_size=0.2"] if args.images_per_class else [])]
    (run,) = load_grid(ROOT / "experiments" / "grids" / "seed_norms.yaml", overrides).runs
    return run.config


class Timings:
    """(wall, CPU of the calling thread) seconds of each call, per row, over one tracked run; a
    call counts in its "part" rows when made inside another timed call, else in its other rows."""

    def __init__(self) -> None:
        self.calls: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.on = False
        self.depth = 0  # timed calls in progress (all in the training thread)

    def wrap(self, owner: Any, attr: str, rows: dict[str, str]) -> None:
        """Time ``owner.attr``; ``rows``: group -> row."""
        original: Callable[..., Any] = getattr(owner, attr)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            outer = self.depth == 0
            self.depth += 1
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.depth -= 1
                row = rows.get("part") if not outer else next((r for g, r in rows.items() if g != "part"), None)
                if self.on and row is not None:
                    self.calls[row].append((time.perf_counter() - t0, time.thread_time() - c0))

        setattr(owner, attr, timed)

    def seconds(self, group: str, cpu: bool = False) -> float:
        return sum(call[cpu] for row, g in ROWS if g == group for call in self.calls[row])


def instrument(timings: Timings) -> None:
    """Wrap the tracking calls that ``run_tracked`` makes (all looked up at call time)."""
    from matplotlib.figure import Figure

    from experiments import plots, study_run
    from orchestrator.execute.run import Run
    from orchestrator.store import checkpoints, claims, provenance, tracking

    owners = {"tracking": tracking, "TrackingStore": tracking.TrackingStore, "provenance": provenance,
              "study_run": study_run, "SystemMetrics": tracking.SystemMetrics, "Run": Run, "Fence": claims.Fence,
              "checkpoints": checkpoints, "plots": plots, "Figure": Figure}
    functions: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for owner, attr, row, group in CALLS:
        functions[owner, attr][group] = row
    for (owner, attr), rows in functions.items():
        timings.wrap(owners[owner], attr, rows)


def background_cpu() -> float:
    """CPU seconds so far of this process's MLflow threads (:data:`BACKGROUND`), from Linux's /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    seconds = 0.0
    for thread in threading.enumerate():
        if thread.name.startswith(BACKGROUND):
            try:
                fields = Path(f"/proc/self/task/{thread.native_id}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # ended meanwhile
                continue
            seconds += (int(fields[11]) + int(fields[12])) / tick
    return seconds


def warm_up(cfg: Any, store: Any) -> float:
    """What every run after a point process's first finds ready: the data decoded (and cached),
    mlflow and matplotlib imported, the store's tables made, the figures' layouts built.
    Returns the fixed-cost seconds of the tracked digits run that does it (a process's first)."""
    import numpy as np

    from experiments import plots
    from experiments.config import load
    from experiments.data import load_splits
    from experiments.study import STUDY
    from experiments.train import resolve_device
    from orchestrator.execute.runner import run_tracked
    from orchestrator.execute.stop import StopFlag

    splits = load_splits(cfg.data, resolve_device("auto"))
    plots.confusion_matrix(np.zeros((len(splits.class_names),) * 2), splits.class_names)
    first = Timings()
    instrument(first)
    first.on = True
    tiny = load(None, ["model.depth_n=1", "train.max_epochs=1"])
    code, _, _ = run_tracked(STUDY, tiny, store=store, experiment_id=store.ensure_experiment("warm-up"),
                             quiet=True, stop=StopFlag(), claim={})
    first.on = False
    if code != 0:
        sys.exit(f"the warm-up run failed (exit {code})")
    return first.seconds("run")


def timed_run(fn: Callable[[Callable], Any]) -> dict:
    """Wall seconds of ``fn(on_epoch)``; the median epoch's wall and CPU seconds (all of this
    process's threads) and the CPU seconds per epoch of MLflow's threads, mark to mark (epoch 1
    is left out)."""
    marks: list[tuple[float, float, float]] = []
    t0 = time.perf_counter()
    outcome = fn(lambda epoch, values: marks.append((time.perf_counter(), time.process_time(), background_cpu())))
    pairs = list(zip(marks, marks[1:]))
    return {"wall": time.perf_counter() - t0, "outcome": outcome,
            "epoch": statistics.median(b[0] - a[0] for a, b in pairs),
            "epoch_cpu": statistics.median(b[1] - a[1] for a, b in pairs),
            "background": (marks[-1][2] - marks[0][2]) / len(pairs)}


def breakdown(timings: Timings, epochs: int) -> list[str]:
    out = ["", "The tracked run's calls (indented rows: calls made inside the row above them, shown, not added "
           "again; CPU: of the calling thread):",
           "", "| call | when | calls | wall s per run | CPU s per run | wall ms per call (median) |",
           "|---|---|---:|---:|---:|---:|"]
    for row, group in ROWS:
        calls = timings.calls.get(row, [])
        if calls:
            when = {"epoch": "epochs", "run": "once", "part": "inside"}[group]
            out.append(f"| {row} | {when} | {len(calls)} | {sum(w for w, _ in calls):.3f} | "
                       f"{sum(c for _, c in calls):.3f} | {1000 * statistics.median(w for w, _ in calls):.1f} |")
    out.append(f"\n({epochs} epochs.)")
    return out


def verdict(ok: bool) -> str:
    return "within goal" if ok else "ABOVE goal"


def report(without: dict, with_: dict, timings: Timings, interval: float, first: float, cfg: Any, data: str,
           device: str) -> list[str]:
    """The side-by-side table, (a) and (b) in wall and in CPU seconds, then the calls."""
    epochs = with_["outcome"]
    per_epoch = [timings.seconds("epoch", cpu) / epochs + with_["background"] for cpu in (False, True)]
    fraction = [per_epoch[0] / without["epoch"], per_epoch[1] / without["epoch_cpu"]]
    fixed = [timings.seconds("run", cpu) for cpu in (False, True)]
    out = ["", "| | without tracking | with tracking | with / without |", "|---|---:|---:|---:|"]
    for label, key in (("epoch, wall s", "epoch"), ("epoch, CPU s of this process", "epoch_cpu"),
                       ("run, wall s (data loading and final evaluation included)", "wall")):
        out.append(f"| {label} | {without[key]:.2f} | {with_[key]:.2f} | {with_[key] / without[key]:.3f} |")
    out += [f"| **(a) tracking per epoch**, wall / CPU s: calls during the epochs + MLflow's threads "
            f"({with_['background']:.4f} CPU s) | – | {per_epoch[0]:.4f} / {per_epoch[1]:.4f} | **{100 * fraction[0]:.2f}% / "
            f"{100 * fraction[1]:.2f}%** of the epoch without tracking (goal ≤ {100 * EPOCH_GOAL:.0f}%: "
            f"{verdict(fraction[0] <= EPOCH_GOAL)} / {verdict(fraction[1] <= EPOCH_GOAL)}) |",
            f"| **(b) fixed per run**, wall / CPU s of the calling thread | – | **{fixed[0]:.3f} / {fixed[1]:.3f}** "
            f"| goal ≤ {RUN_GOAL} s: {verdict(fixed[0] <= RUN_GOAL)} / {verdict(fixed[1] <= RUN_GOAL)} |",
            "",
            f"- epochs 2–{epochs} of each run (mark to mark at the epochs' ends); wall times include waiting for a "
            "core on a shared machine, CPU times do not (the load average is in the header)",
            f"- config: seed_norms.yaml, {' '.join(STUDY)}, train.max_epochs={cfg.train.max_epochs}, device {device}; "
            f"data: {data}, val_size {cfg.data.val_size:g}; precision {cfg.train.precision}; checkpoints every "
            f"{cfg.train.checkpoint_seconds:g} s, system metrics every {interval:g} s",
            f"- the first tracked run in a process also imports mlflow.pytorch and builds the figures' layouts: "
            f"its fixed calls took {first:.3f} s wall (a one-epoch digits run, the warm-up)"]
    return out + breakdown(timings, epochs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (default 3; at least 2)")
    parser.add_argument("--images-per-class", type=int, default=0, help="a subset of the tree (default: all of it)")
    parser.add_argument("--root", help="CIFAR-10 tree (train/, test/); default: the shared tarball, extracted")
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    args = parser.parse_args(argv)

    import logging
    import warnings

    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory(prefix="orch-tracking-cost-") as tmp:
        os.environ["ORCH_CACHE_DIR"] = str(Path(tmp) / "cache")  # the decode cache of the tree, thrown away after
        cfg = study_config(data_root(args, Path(tmp)), args)
        from experiments.study import STUDY as study
        from experiments.train import NullTracker, resolve_device, train
        from orchestrator.execute.runner import cap_threads, run_tracked
        from orchestrator.execute.stop import StopFlag
        from orchestrator.store.tracking import TrackingStore

        cap_threads()  # what run_tracked does first: both sides train with the same threads
        lines = header("Tracking cost: the study's CIFAR-10 run with MLflow tracking vs without")
        print("\n".join(lines), flush=True)
        store = TrackingStore(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        logging.getLogger("mlflow").setLevel(logging.ERROR)
        print("warm-up: data, imports, store, figure layouts ...", file=sys.stderr, flush=True)
        first = warm_up(cfg, store)
        timings = Timings()
        instrument(timings)
        experiment = store.ensure_experiment("tracking-cost")

        def tracked(on_epoch: Callable) -> int:
            timings.on = True
            code, _, summary = run_tracked(study, cfg, store=store, experiment_id=experiment, quiet=True,
                                           stop=StopFlag(), claim={}, on_log=on_epoch)
            timings.on = False
            if code != 0:
                sys.exit(f"the tracked run failed (exit {code})")
            return int(summary["epochs_run"])

        print("without tracking ...", file=sys.stderr, flush=True)
        without = timed_run(lambda on_epoch: train(cfg, NullTracker(), device="auto", on_epoch=on_epoch))
        print("with tracking ...", file=sys.stderr, flush=True)
        with_ = timed_run(tracked)
        device = str(resolve_device("auto"))
    interval = float(os.environ.get("ORCH_SYSTEM_METRICS_SECONDS", "10"))
    data = (f"the JPEG tree, first {args.images_per_class} training and {max(1, args.images_per_class // 5)} test "
            "images of each class" if args.images_per_class else "the whole JPEG tree (50,000 training, 10,000 test)")
    out = report(without, with_, timings, interval, first, cfg, data, device)
    finish(lines, "\n".join(out), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
