"""One training run: data → model → SGD + StepLR → early stopping → best-checkpoint evaluation.

Reads top to bottom as the run does. Nothing here knows about MLflow: results go to a
``Tracker`` (the orchestrator's MLflow tracker, or :class:`NullTracker`).
"""

from __future__ import annotations

import copy
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from experiments import metric_names as names
from experiments import metrics as M
from experiments.config import RunConfig
from experiments.data import Splits, eval_batches, load_splits, train_batches
from experiments.metric_names import EPOCH_METRICS, SPLITS, epoch_key
from experiments.probes import feature_quantiles
from models import ResNet, clamp_gates_, gate_parameters


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the run is over and counts as failed."""


class Tracker(Protocol):
    """Where a run's numbers go while it trains (artifacts are drawn from the RunResult)."""

    def log_epoch(self, epoch: int, values: dict[str, float]) -> None: ...
    def log_summary(self, values: dict[str, float]) -> None: ...


class NullTracker:
    """Records nothing."""

    def log_epoch(self, epoch: int, values: dict[str, float]) -> None:
        pass

    def log_summary(self, values: dict[str, float]) -> None:
        pass


@dataclass
class RunResult:
    """What a finished run hands back: its numbers, its restored best model, and what its
    artifacts are drawn from."""

    summary: dict[str, float]
    history: dict[str, list[float]] = field(default_factory=dict)  # epoch/<name> -> one value per epoch
    best_epoch: int = 0
    model: torch.nn.Module | None = None  # the best checkpoint, restored, float32, eval mode
    predictions: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # split -> (true, pred)
    class_names: list[str] = field(default_factory=list)
    example: torch.Tensor | None = None  # two normalised validation images: the model's input signature


def resolve_device(device: str | None) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return torch.device(device)


def build_model(cfg: RunConfig, splits: Splits) -> ResNet:
    return ResNet(
        n=cfg.model.depth_n,
        num_classes=splits.num_classes,
        norm=cfg.model.norm,
        in_channels=splits.in_channels,
        widths=cfg.model.widths,
        groups=cfg.model.gn_groups,
        rho_init=cfg.model.bin_rho,
    )


def make_optimizer(cfg: RunConfig, model: torch.nn.Module) -> torch.optim.SGD:
    """SGD with weight decay on every parameter except the Batch-Instance gates."""
    gate_ids = {id(p) for p in gate_parameters(model)}
    groups = [{"params": [p for p in model.parameters() if id(p) not in gate_ids],
               "weight_decay": cfg.optim.weight_decay}]
    if gate_ids:
        groups.append({"params": gate_parameters(model), "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=cfg.optim.lr, momentum=cfg.optim.momentum)


@torch.no_grad()
def predict(model: torch.nn.Module, splits: Splits, split: str, batch_size: int, autocast, channels_last: bool):
    """Mean cross-entropy and predicted labels over one split, in order."""
    model.eval()
    loss_sum = torch.zeros((), device=splits.train_x.device)
    preds = []
    for x, y in eval_batches(splits, split, batch_size, channels_last=channels_last):
        with autocast():
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        preds.append(logits.argmax(1))
    n = len(getattr(splits, f"{split}_y"))
    return loss_sum.item() / n, torch.cat(preds).cpu().numpy()


@torch.no_grad()
def probe(model: torch.nn.Module, splits: Splits, autocast, channels_last: bool) -> dict[str, float]:
    model.eval()
    x = splits.normalize(splits.val_x[:1], channels_last=channels_last)
    with autocast():
        return feature_quantiles(model.features(x)[0])


def train(
    cfg: RunConfig,
    tracker: Tracker | None = None,
    *,
    device: str | None = "auto",
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> RunResult:
    """Train one configuration and evaluate its best checkpoint.

    Args:
        cfg: the resolved run configuration.
        tracker: receives per-epoch values, summary metrics and artifacts.
        device: ``auto``, ``cpu`` or ``cuda[:i]``.
        on_epoch: called after each epoch with (epoch, values); may raise to stop the run
            (the tuner raises ``optuna.TrialPruned`` through it).

    Raises:
        TrainingDiverged: the training or validation loss became non-finite.
    """
    tracker = tracker or NullTracker()
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)

    # Data: resident on the device as uint8, normalised per batch.
    splits = load_splits(cfg.data, dev)
    channels_last = cuda  # conv kernels prefer NHWC on tensor cores
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else nullcontext

    # Model and optimizer. Batch-Instance gates get no weight decay and are clamped to [0, 1] after each step.
    model = build_model(cfg, splits).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if cfg.train.compile else model
    gates = gate_parameters(model)
    opt = make_optimizer(cfg, model)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.schedule.step_size, gamma=cfg.schedule.gamma)
    gen = torch.Generator().manual_seed(cfg.seed)

    history: dict[str, list[float]] = {epoch_key(k): [] for k in EPOCH_METRICS}
    best_loss, best_epoch, best_state, stale = math.inf, 0, None, 0
    step_seconds, images_seen = 0.0, 0
    t_start = time.perf_counter()
    for epoch in range(1, cfg.train.max_epochs + 1):
        # Train one epoch. Loss and accuracy accumulate on the device: one sync per epoch.
        model.train()
        lr = opt.param_groups[0]["lr"]
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev, dtype=torch.long)
        seen = 0
        t0 = time.perf_counter()
        for x, y in train_batches(splits, cfg.data.batch_size, gen, augment=cfg.data.augment,
                                  channels_last=channels_last):
            with autocast():
                logits = step_model(x)
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if gates:
                clamp_gates_(model)
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
        train_loss = loss_sum.item() / seen
        if cuda:
            torch.cuda.synchronize()
        step_seconds += time.perf_counter() - t0
        images_seen += seen
        sched.step()
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"non-finite training loss ({train_loss}) at epoch {epoch}; lower optim.lr")

        # Validate, probe, record.
        val_loss, val_pred = predict(model, splits, "val", cfg.data.eval_batch_size, autocast, channels_last)
        if not math.isfinite(val_loss):
            raise TrainingDiverged(f"non-finite validation loss ({val_loss}) at epoch {epoch}; lower optim.lr")
        val_true = splits.val_y.cpu().numpy()
        values = {
            names.TRAIN_LOSS: train_loss,
            names.TRAIN_ACC: correct.item() / seen,
            names.VAL_LOSS: val_loss,
            **M.classification_metrics(val_true, val_pred, "val"),
            names.LR: lr,
            **probe(model, splits, autocast, channels_last),
        }
        for k in EPOCH_METRICS:
            history[epoch_key(k)].append(values[k])
        tracker.log_epoch(epoch, values)
        if on_epoch is not None:
            on_epoch(epoch, values)

        # Early stopping on validation loss; keep the best weights.
        if val_loss < best_loss:
            best_loss, best_epoch, stale = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= cfg.train.patience:
                break
    train_seconds = time.perf_counter() - t_start
    epochs_run = epoch

    # Restore the best checkpoint and evaluate it on every split.
    model.load_state_dict(best_state)
    summary: dict[str, float] = {}
    predictions = {}
    for split in SPLITS:
        _, pred = predict(model, splits, split, cfg.data.eval_batch_size, autocast, channels_last)
        truth = getattr(splits, f"{split}_y").cpu().numpy()
        predictions[split] = (truth, pred)
        summary.update(M.classification_metrics(truth, pred, split))
    summary.update({
        names.BEST_EPOCH: best_epoch,
        names.EPOCHS_RUN: epochs_run,
        names.TRAIN_SECONDS: train_seconds,
        names.IMAGES_PER_SECOND: images_seen / step_seconds if step_seconds > 0 else 0.0,
    })
    tracker.log_summary(summary)

    example = splits.normalize(splits.val_x[:2], channels_last=channels_last).float()
    return RunResult(summary=summary, history=history, best_epoch=best_epoch, model=model.float().eval(),
                     predictions=predictions, class_names=list(splits.class_names), example=example)
