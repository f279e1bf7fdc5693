"""What checkpoints cost a run: tracked training with checkpoints off vs every epoch vs the default.

Three sides train the same configuration (``orch run``'s defaults: digits, batch 128, at
most 50 epochs with patience 5, unless ``--set`` changes them) in this one process, each
as the study's run through ``orchestrator.execute.runner.run_tracked(STUDY, cfg, ...)`` into a
temporary SQLite store, with ``stop=StopFlag()`` as a point has it:

* off: the study's ``train(cfg, run)`` (``experiments/study_run.py``) with its checkpoint
  adapter removed: the loop gets no checkpoints, so no state is ever captured or written;
* every epoch: ``train.checkpoint_seconds=0``;
* default: ``train.checkpoint_seconds=60`` (what a sweep's point does).

The study offers a checkpoint at every epoch end: ``experiments.train.capture`` copies
everything exact resume needs (model, optimizer, scheduler, early-stopping state with the
best weights, history, every random state) and ``run.save_checkpoint(state)`` pickles it
(``orchestrator.store.checkpoints.envelope``); when ``checkpoint_seconds`` have passed since
the last write (0: always) the run waits for its metric writes and writes the pickle
(``checkpoints.write``: uploaded as a run artifact, then the run's checkpoint tags).
One untimed warm-up of each side comes first; timed runs rotate their order; the table
shows medians and the ratio to "off", plus the checkpoints written and the seconds spent
at the epoch ends in ``capture`` and ``run.save_checkpoint``, timed in the very runs.
The study trains on device ``auto`` (CUDA when present).

Usage::

    python benchmarks/checkpoint_cost.py --out benchmarks/results/checkpoint_cost_cpu.md
    python benchmarks/checkpoint_cost.py --set data.name=imagefolder --set data.root=/data/cifar10 \\
        --set train.max_epochs=5
"""

from __future__ import annotations

import contextlib
import functools
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from _report import finish, run_parser  # noqa: E402
from tracking_overhead import header  # noqa: E402

SIDES = {"off": None, "every epoch": 0.0, "default (60 s)": 60.0}  # side -> train.checkpoint_seconds
PARTS = ("capture", "envelope", "write", "save")  # the timed parts of one epoch end's checkpoint


class EpochEnds:
    """Seconds of each epoch end's checkpoint in the runs timed: ``capture`` (the state's copy),
    ``save`` (all of ``run.save_checkpoint``), and inside it ``envelope`` (the pickle) and
    ``write`` (upload + tags; absent when none was due)."""

    def __init__(self) -> None:
        self.ends: list[dict[str, float]] = []

    def wrap(self, owner: Any, attr: str, part: str) -> None:
        original: Callable[..., Any] = getattr(owner, attr)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if part == "capture" or not self.ends:
                self.ends.append({})
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.ends[-1][part] = self.ends[-1].get(part, 0.0) + time.perf_counter() - t0

        setattr(owner, attr, timed)

    def instrument(self) -> None:
        from experiments import train
        from orchestrator.execute.run import Run
        from orchestrator.store import checkpoints

        for owner, attr, part in ((train, "capture", "capture"), (Run, "save_checkpoint", "save"),
                                  (checkpoints, "envelope", "envelope"), (checkpoints, "write", "write")):
            self.wrap(owner, attr, part)

    def seconds(self, *parts: str, written: bool | None = None) -> list[float]:
        """Per epoch end (only those that wrote, or did not, if ``written`` says): the parts' seconds."""
        return [sum(end.get(p, 0.0) for p in parts) for end in self.ends
                if written is None or ("write" in end) == written]


@contextlib.contextmanager
def checkpoints_off() -> Iterator[None]:
    """The study's run without checkpoints: its loop gets none (``checkpoints=None``)."""
    from experiments import study_run

    adapter = study_run._RunCheckpoints
    study_run._RunCheckpoints = lambda run: None
    try:
        yield
    finally:
        study_run._RunCheckpoints = adapter


def table(results: dict[str, list[dict]]) -> list[str]:
    def med(side: str, key: str) -> float:
        return statistics.median(r[key] for r in results[side])

    base = med("off", "wall")
    out = ["", "| side | wall s (median) | wall s, every run | ratio to off | checkpoints per run | "
               "s in checkpoints per run | ms per checkpoint |", "|---|---:|---|---:|---:|---:|---:|"]
    for side in SIDES:
        n, secs = med(side, "saves"), med(side, "save_s")
        per = [1000 * s for r in results[side] for s in r["written"]]
        every = ", ".join(f"{r['wall']:.2f}" for r in results[side])
        out.append(f"| {side} | {med(side, 'wall'):.2f} | {every} | {med(side, 'wall') / base:.3f} | {n:.0f} | "
                   f"{secs:.2f} | {statistics.median(per) if per else 0:.0f} |")
    parts = {p: [1000 * s for side in SIDES for r in results[side] for s in r[p]] for p in PARTS}
    ms = {p: f"{statistics.median(v):.1f}" if v else "–" for p, v in parts.items()}
    out += ["", f"({med('off', 'epochs'):.0f} epochs per run. The ratio's noise is the run-to-run spread shown in "
                "'every run'; the checkpoint seconds are measured inside the runs: at every epoch end (off: none) "
                "the state's copy (`capture`) and `run.save_checkpoint`; ms per checkpoint is the median epoch end "
                "that wrote one. Median ms per epoch end over the checkpointing sides: capture "
                f"{ms['capture']}, pickle (envelope) {ms['envelope']}, upload + tags when written {ms['write']}, "
                f"all of run.save_checkpoint {ms['save']}.)"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = run_parser(__doc__)
    parser.add_argument("--out", type=Path, default=None, help="also write the report to this file")
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore")
    import dataclasses

    import mlflow  # noqa: F401 - imported first so that its loggers can be quietened

    from experiments.config import load
    from experiments.study import STUDY
    from experiments.train import resolve_device
    from orchestrator.execute.runner import run_tracked
    from orchestrator.execute.stop import StopFlag
    from orchestrator.store import tracking

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
    cfg = load(None, args.overrides)
    lines = header("Checkpoint cost: one tracked run with checkpoints off, every epoch, and at the default interval")
    lines.append(f"- config: orch run defaults{' + ' + ' '.join(args.overrides) if args.overrides else ''} "
                 f"(data {cfg.data.name}, batch {cfg.data.batch_size}, max_epochs {cfg.train.max_epochs}, "
                 f"patience {cfg.train.patience}), device {resolve_device('auto')}; one warm-up per side, then "
                 f"{args.repeats} timed runs per side in rotating order; medians")
    print("\n".join(lines), flush=True)

    timings = EpochEnds()
    timings.instrument()
    results: dict[str, list[dict]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="orch-ckpt-bench-") as tmp:
        store = tracking.TrackingStore(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        exp_id = store.ensure_experiment("checkpoint-cost")

        def run(side: str) -> dict:
            interval = SIDES[side]
            side_cfg = cfg if interval is None else dataclasses.replace(
                cfg, train=dataclasses.replace(cfg.train, checkpoint_seconds=interval))
            timings.ends.clear()
            t0 = time.perf_counter()
            with checkpoints_off() if interval is None else contextlib.nullcontext():
                code, _, summary = run_tracked(STUDY, side_cfg, store=store, experiment_id=exp_id, run_name=side,
                                               quiet=True, stop=StopFlag())
            wall = time.perf_counter() - t0
            if code != 0:
                raise SystemExit(f"the {side} run failed (exit {code})")
            return {"wall": wall, "saves": len(timings.seconds("write", written=True)),
                    "save_s": sum(timings.seconds("capture", "save")),
                    "written": timings.seconds("capture", "save", written=True),
                    **{p: timings.seconds(p, written=True if p == "write" else None) for p in PARTS},
                    "epochs": summary.get("epochs_run", 0)}

        print("warm-up (untimed) ...", file=sys.stderr, flush=True)
        for side in SIDES:
            run(side)
        order = list(SIDES)
        for i in range(args.repeats):
            for side in order[i % len(order):] + order[:i % len(order)]:
                r = run(side)
                results[side].append(r)
                print(f"  repeat {i + 1}/{args.repeats} {side:>15}: {r['wall']:.2f} s, {r['saves']} checkpoints "
                      f"({r['save_s']:.2f} s)", file=sys.stderr, flush=True)

    finish(lines, "\n".join(table(results)), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
