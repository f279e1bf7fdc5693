"""The trivial entry of benchmarks/scale.py: trains nothing, logs a few metrics, returns summary
metrics, so that a sweep of it measures orch and its store alone.

``main(config, run)`` as ``entry: scale_entry:main`` names it (orch imports it from the grid
file's folder; scale.py copies this file there). Three steps of three metrics, one batched
``run.log`` per step, and four summary metrics: what a short real run writes, without training.
"""

from __future__ import annotations

import math
import time

STEPS = 3  # logged steps per run ("epochs")


def main(config, run):
    """Deterministic made-up numbers from the config and the seed; ``entry_seconds``: this function's own time."""
    t0 = time.perf_counter()
    lr, width = float(config["lr"]), int(config["width"])
    base = 0.5 + 0.4 * math.tanh(width / 64) - abs(math.log10(lr) + 2) * 0.05 + 0.01 * (run.seed % 7)
    for step in range(1, STEPS + 1):
        run.log({"train_loss": 1.0 / step, "val_loss": 1.1 / step, "val_acc": base * step / STEPS}, step=step)
    return {"val_acc": base, "val_loss": 1.1 / STEPS, "test_acc": base - 0.01,
            "entry_seconds": time.perf_counter() - t0}
