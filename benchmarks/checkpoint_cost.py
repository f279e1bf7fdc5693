"""What checkpoints cost a run: tracked training with checkpoints off vs every epoch vs the default.

Three sides train the same configuration (``orch run``'s defaults: digits, batch 128, at
most 50 epochs with patience 5, unless ``--set`` changes them) in this one process, each
through ``orchestrator.execute.runner.run_tracked`` into a temporary SQLite store:

* off: ``stop=None`` — no checkpoint is ever written (``orch run`` without a stop flag);
* every epoch: ``stop=StopFlag()`` with ``train.checkpoint_seconds=0``;
* default: ``stop=StopFlag()`` with ``train.checkpoint_seconds=60`` (what a sweep's point does).

A checkpoint is everything exact resume needs (model, optimizer, scheduler, early-stopping
state with the best weights, history, every random state), written with ``torch.save`` to
a temporary file, renamed, and logged as a run artifact, then the run's checkpoint tags.
One untimed warm-up of each side comes first; timed runs rotate their order; the table
shows medians and the ratio to "off", plus the checkpoints written and the seconds per
checkpoint (``RunCheckpoints.save`` timed in the very runs).

Usage::

    python benchmarks/checkpoint_cost.py --out benchmarks/results/checkpoint_cost_cpu.md
    python benchmarks/checkpoint_cost.py --device cuda --set data.name=imagefolder --set data.root=/data/cifar10 \\
        --set train.max_epochs=5
"""

from __future__ import annotations

import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from _report import finish, run_parser  # noqa: E402
from tracking_overhead import header  # noqa: E402

SIDES = {"off": None, "every epoch": 0.0, "default (60 s)": 60.0}  # side -> train.checkpoint_seconds


def main(argv: list[str] | None = None) -> int:
    parser = run_parser(__doc__)
    parser.add_argument("--out", type=Path, default=None, help="also write the report to this file")
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore")
    import dataclasses

    import mlflow  # noqa: F401 - imported first so that its loggers can be quietened

    from experiments.config import load
    from orchestrator.store import tracking
    from orchestrator.execute.stop import StopFlag
    from orchestrator.store.checkpoints import RunCheckpoints
    from orchestrator.execute.runner import run_tracked

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
    cfg = load(None, args.overrides)
    lines = header("Checkpoint cost: one tracked run with checkpoints off, every epoch, and at the default interval")
    lines.append(f"- config: orch run defaults{' + ' + ' '.join(args.overrides) if args.overrides else ''} "
                 f"(data {cfg.data.name}, batch {cfg.data.batch_size}, max_epochs {cfg.train.max_epochs}, "
                 f"patience {cfg.train.patience}), device {args.device}; one warm-up per side, then "
                 f"{args.repeats} timed runs per side in rotating order; medians")
    print("\n".join(lines), flush=True)

    saves: list[float] = []
    original_save = RunCheckpoints.save

    def timed_save(self, state):
        t0 = time.perf_counter()
        try:
            return original_save(self, state)
        finally:
            saves.append(time.perf_counter() - t0)

    RunCheckpoints.save = timed_save
    results: dict[str, list[dict]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="orch-ckpt-bench-") as tmp:
        store = tracking.TrackingStore(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        exp_id = store.ensure_experiment("checkpoint-cost")

        def run(side: str) -> dict:
            interval = SIDES[side]
            side_cfg = cfg if interval is None else dataclasses.replace(
                cfg, train=dataclasses.replace(cfg.train, checkpoint_seconds=interval))
            saves.clear()
            t0 = time.perf_counter()
            code, _, summary = run_tracked(side_cfg, store=store, experiment_id=exp_id, run_name=side,
                                           device=args.device, quiet=True,
                                           stop=None if interval is None else StopFlag())
            wall = time.perf_counter() - t0
            if code != 0:
                raise SystemExit(f"the {side} run failed (exit {code})")
            return {"wall": wall, "saves": len(saves), "save_s": sum(saves), "epochs": summary.get("epochs_run", 0)}

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

    def med(side: str, key: str) -> float:
        return statistics.median(r[key] for r in results[side])

    base = med("off", "wall")
    out = ["", "| side | wall s (median) | wall s, every run | ratio to off | checkpoints per run | "
               "s in checkpoints per run | ms per checkpoint |", "|---|---:|---|---:|---:|---:|---:|"]
    for side in SIDES:
        n, secs = med(side, "saves"), med(side, "save_s")
        every = ", ".join(f"{r['wall']:.2f}" for r in results[side])
        out.append(f"| {side} | {med(side, 'wall'):.2f} | {every} | {med(side, 'wall') / base:.3f} | {n:.0f} | "
                   f"{secs:.2f} | {1000 * secs / n if n else 0:.0f} |")
    out += ["", f"({med('off', 'epochs'):.0f} epochs per run. The ratio's noise is the run-to-run spread shown in "
                "'every run'; the checkpoint seconds are measured inside the runs.)"]
    finish(lines, "\n".join(out), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
