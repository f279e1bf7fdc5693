"""The names of the metrics a training run emits, defined once (no torch here).

Per epoch (``EPOCH_METRICS``), logged as ``epoch/<name>`` with step = epoch (1-based),
and once at the end for the restored best checkpoint (``SUMMARY_METRICS``). The
orchestrator (tuning, comparison, display) and the tests import these names instead
of spelling them.
"""

from __future__ import annotations

SPLITS = ("train", "val", "test")
SCORES = ("acc", "f1_micro", "f1_macro")  # accuracy, F1 micro, F1 macro
EPOCH_PREFIX = "epoch/"

# Percentiles of the probed penultimate feature vector: name -> quantile in [0, 1].
QUANTILES: dict[str, float] = {"feat_q01": 0.01, "feat_q20": 0.20, "feat_q80": 0.80, "feat_q99": 0.99}

# Per-epoch values, in logging order.
TRAIN_LOSS, TRAIN_ACC, VAL_LOSS = "train_loss", "train_acc", "val_loss"
LR = "lr"  # the learning rate the epoch trained with
VAL_SCORES = tuple(f"val_{s}" for s in SCORES)
EPOCH_SCORES = (TRAIN_LOSS, TRAIN_ACC, VAL_LOSS, *VAL_SCORES)
EPOCH_METRICS = (*EPOCH_SCORES, LR, *QUANTILES)

# Summary of the restored best checkpoint: every split × score, then run facts.
SPLIT_SCORES = tuple(f"{split}_{s}" for split in SPLITS for s in SCORES)
BEST_EPOCH, EPOCHS_RUN, TRAIN_SECONDS, IMAGES_PER_SECOND = "best_epoch", "epochs_run", "train_seconds", "images_per_second"
RUN_FACTS = (BEST_EPOCH, EPOCHS_RUN, TRAIN_SECONDS, IMAGES_PER_SECOND)
SUMMARY_METRICS = (*SPLIT_SCORES, *RUN_FACTS)

DEFAULT_OBJECTIVE = VAL_SCORES[-1]  # val_f1_macro: what sweeps, tuning and displays rank by unless told


def epoch_key(name: str) -> str:
    """``"val_loss"`` → ``"epoch/val_loss"``: the MLflow metric key of a per-epoch value."""
    return f"{EPOCH_PREFIX}{name}"
