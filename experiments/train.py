"""One training run: data → model → SGD + StepLR → early stopping → best-checkpoint evaluation.

Reads top to bottom as the run does. Nothing here knows about MLflow: results go to a
``Tracker`` (the orchestrator's MLflow tracker, or :class:`NullTracker`).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import math
import random
import time
import types
import typing
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from experiments import metric_names as names
from experiments import metrics as M
from experiments.config import RunConfig, check_device, result_dict
from experiments.data import Splits, eval_batches, load_splits, train_batches
from experiments.metric_names import EPOCH_METRICS, SPLITS, epoch_key
from experiments.probes import feature_quantiles
from models import ResNet, clamp_gates_, gate_parameters


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the run is over and counts as failed."""


class Tracker(Protocol):
    """Where a run's numbers go while it trains (artifacts are drawn from the RunResult)."""

    def log_data(self, data: dict[str, Any]) -> None: ...  # what it trains on: describe_data()
    def log_epoch(self, epoch: int, values: dict[str, float]) -> None: ...
    def log_summary(self, values: dict[str, float]) -> None: ...


class NullTracker:
    """Records nothing."""

    def log_data(self, data: dict[str, Any]) -> None:
        pass

    def log_epoch(self, epoch: int, values: dict[str, float]) -> None:
        pass

    def log_summary(self, values: dict[str, float]) -> None:
        pass


def describe_data(cfg: RunConfig, splits: Splits) -> dict[str, Any]:
    """Name, source and, per split, the number of examples and a SHA-256 of their pixels and
    labels: two runs on different data differ in digest. (0.3 s for CIFAR-10's 150 MB.)"""
    d = cfg.data
    source = str(Path(d.root).expanduser()) if d.root else "sklearn.datasets.load_digits"
    name = Path(d.root).expanduser().name if d.name == "imagefolder" and d.root else d.name
    digests = {}
    for split in SPLITS:
        x, y = getattr(splits, f"{split}_x"), getattr(splits, f"{split}_y")
        h = hashlib.sha256()
        h.update(x.cpu().contiguous().numpy().data)
        h.update(y.cpu().contiguous().numpy().data)
        digests[split] = (len(y), h.hexdigest())
    return {"name": name, "source": source, "classes": splits.num_classes, "splits": digests}


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
    epoch_times: list[int] = field(default_factory=list)  # when each epoch was recorded, ms since the epoch


def resolve_device(device: str | None) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return torch.device(device)


def norm_options(cfg: RunConfig) -> dict:
    """The options of the chosen norm layer: each config key reaches only the norm it belongs to."""
    m = cfg.model
    if m.norm == "gn":
        return {"groups": m.gn_groups}
    if m.norm == "bin":
        return {"rho_init": m.bin_rho, "gate": m.bin_gate}
    return {}


def build_model(cfg: RunConfig, splits: Splits) -> ResNet:
    m = cfg.model
    return ResNet(n=m.depth_n, num_classes=splits.num_classes, norm=m.norm, in_channels=splits.in_channels,
                  widths=m.widths, norm_options=norm_options(cfg), conv_bias=m.conv_bias, init=m.init,
                  stem_padding=m.stem_padding)


def make_optimizer(cfg: RunConfig, model: torch.nn.Module) -> torch.optim.SGD:
    """SGD; the Batch-Instance gates get no weight decay and lr x ``optim.gate_lr_mult``."""
    gates = gate_parameters(model)
    gate_ids = {id(p) for p in gates}
    groups = [{"params": [p for p in model.parameters() if id(p) not in gate_ids],
               "weight_decay": cfg.optim.weight_decay}]
    if gates:
        groups.append({"params": gates, "weight_decay": 0.0, "lr": cfg.optim.lr * cfg.optim.gate_lr_mult})
    return torch.optim.SGD(groups, lr=cfg.optim.lr, momentum=cfg.optim.momentum)


def resolve_precision(cfg: RunConfig, dev: torch.device) -> str:
    """``auto`` → bf16 on CUDA, fp32 on the CPU; bf16 and tf32 need CUDA.

    Raises:
        ConfigError: bf16 or tf32 asked for on the CPU (it trains in float32 only).
    """
    check_device(cfg, dev.type)
    if cfg.train.precision == "auto":
        return "bf16" if dev.type == "cuda" else "fp32"
    return cfg.train.precision


def set_precision(precision: str, dev: torch.device) -> Callable[[], Any]:
    """Set this process's float32 matmul/conv mode for the run and return its autocast context.

    Set on every run, not left as found: a long-lived process runs many points, and one
    point's TF32 must not leak into the next.
    """
    if dev.type == "cuda":
        mode = "tf32" if precision == "tf32" else "ieee"
        torch.backends.cuda.matmul.fp32_precision = mode
        torch.backends.cudnn.conv.fp32_precision = mode
    if precision == "bf16":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext


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
def probe(model: torch.nn.Module, splits: Splits, autocast, channels_last: bool, method: str) -> dict[str, float]:
    model.eval()
    x = splits.normalize(splits.val_x[:1], channels_last=channels_last)
    with autocast():
        return feature_quantiles(model.features(x)[0], method)


@dataclass
class Progress:
    """Everything the loop carries from batch to batch: what a checkpoint must hold
    besides the model, optimizer and scheduler states."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # batches of epoch + 1 completed (0: at an epoch boundary)
    history: dict[str, list[float]] = field(default_factory=lambda: {epoch_key(k): [] for k in EPOCH_METRICS})
    epoch_times: list[int] = field(default_factory=list)  # when each epoch was recorded, ms since the epoch
    best_loss: float = math.inf
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    stale: int = 0  # epochs since the best validation loss
    loss_sum: float = 0.0  # the running epoch's training-loss sum ...
    correct: int = 0  # ... correct predictions ...
    seen: int = 0  # ... and examples, so far
    epoch_rng: torch.Tensor | None = None  # the batch-order generator at the running epoch's start
    train_seconds: float = 0.0  # wall time in the loop, over every process that ran this run
    step_seconds: float = 0.0  # time in training steps
    images_seen: int = 0


class Checkpoints(Protocol):
    """Where a run's checkpoints go (the orchestrator's is the run's artifact store)."""

    def due(self) -> bool: ...  # time for a periodic checkpoint at this epoch end
    def save(self, state: dict[str, Any]) -> None: ...


CHECKPOINT_FORMAT = 1


def capture(cfg: RunConfig, model, opt, sched, gen: torch.Generator, progress: Progress) -> dict[str, Any]:
    """A checkpoint: every state needed to continue exactly, as CPU tensors and plain Python."""
    cpu = lambda state: {k: v.detach().cpu().clone() for k, v in state.items()}  # noqa: E731
    np_state = np.random.get_state()
    return {
        "format": CHECKPOINT_FORMAT,
        "config": result_dict(cfg),
        "model": cpu(model.state_dict()),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "progress": {**{f.name: getattr(progress, f.name) for f in dataclasses.fields(progress)},
                     "best_state": cpu(progress.best_state) if progress.best_state is not None else None},
        "rng": {
            "gen": gen.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
            "python": random.getstate(),
        },
    }


_CHECKPOINT_PARTS = {"format": int, "config": dict, "model": dict, "optimizer": dict, "scheduler": dict,
                     "progress": dict, "rng": dict}
_RNG_PARTS = {"gen": torch.Tensor, "torch": torch.Tensor, "cuda": list, "numpy": tuple, "python": tuple}


def checkpoint_problem(state: Any, cfg: RunConfig | None = None) -> str | None:
    """What keeps ``state`` from being a :func:`capture` checkpoint (of ``cfg``, if given), or None.

    The whole checkpoint is checked before a run starts from it, so that a damaged or foreign
    one is skipped instead of failing the run: its format, the keys and types of every part
    (the progress against :class:`Progress`'s fields) and its config. The answer completes
    the phrase "the checkpoint …", e.g. ``lacks 'progress'``.
    """
    if not isinstance(state, dict):
        return f"is a {type(state).__name__}, not a checkpoint"
    if state.get("format", CHECKPOINT_FORMAT) != CHECKPOINT_FORMAT:  # another layout: say so before its keys
        return f"has format {state['format']!r}, not {CHECKPOINT_FORMAT}"
    problem = (_wrong_parts(state, _CHECKPOINT_PARTS, "")
               or _wrong_parts(state["progress"], typing.get_type_hints(Progress), "progress.")
               or _wrong_parts(state["rng"], _RNG_PARTS, "rng."))
    if problem:
        return problem
    tensors = {"model": state["model"], "progress.best_state": state["progress"]["best_state"] or {}}
    for part, values in tensors.items():
        if not all(isinstance(v, torch.Tensor) for v in values.values()):
            return f"has a {part} that is not all tensors"
    if not {"state", "param_groups"} <= set(state["optimizer"]):
        return "has an optimizer state without 'state' and 'param_groups'"
    if cfg is not None and state["config"] != result_dict(cfg):
        return "holds another config"
    return _progress_problem(state["progress"]) or _restore_problem(state)


def _progress_problem(p: dict[str, Any]) -> str | None:
    """What in a checkpoint's progress no loop could have written, or None."""
    if p["epoch"] < 0 or p["batch"] < 0:
        return f"has a negative progress (epoch {p['epoch']}, batch {p['batch']})"
    if set(p["history"]) != {epoch_key(k) for k in EPOCH_METRICS}:
        return "has a progress.history of other metrics than the loop records"
    if any(len(v) != p["epoch"] for v in p["history"].values()) or len(p["epoch_times"]) != p["epoch"]:
        return f"has a progress.history that does not hold its {p['epoch']} epoch(s)"
    if p["epoch"] > 0 and p["best_state"] is None:
        return f"has {p['epoch']} epoch(s) but no best_state"
    return None


def _restore_problem(state: dict[str, Any]) -> str | None:
    """Load the checkpoint into fresh CPU objects of its own config, as :func:`restore` would:
    what that raises (a state of another shape, an RNG state of another size), or None. The
    process's global RNG states are put back afterwards."""
    from experiments.config import build

    saved = torch.get_rng_state(), np.random.get_state(), random.getstate()
    saved_cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        cfg = build(state["config"])
        shape = types.SimpleNamespace(num_classes=state["model"]["head.weight"].shape[0],
                                      in_channels=state["model"]["stem.0.weight"].shape[1])
        model = build_model(cfg, shape)
        opt = make_optimizer(cfg, model)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.schedule.step_size, gamma=cfg.schedule.gamma)
        _apply(state, model, opt, sched, torch.Generator(), torch.device("cpu"))
    except Exception as err:  # noqa: BLE001 - whatever keeps it from loading makes it unusable
        first = (str(err).strip().splitlines() or [""])[0][:200]
        return f"does not load into its model ({type(err).__name__}: {first})"
    finally:
        torch.set_rng_state(saved[0])
        np.random.set_state(saved[1])
        random.setstate(saved[2])
        if saved_cuda is not None:
            torch.cuda.set_rng_state_all(saved_cuda)
    return None


def _wrong_parts(parts: dict, expected: dict[str, Any], prefix: str) -> str | None:
    """The first key of ``parts`` missing, unknown or of the wrong type against ``expected``."""
    for key, tp in expected.items():
        if key not in parts:
            return f"lacks {prefix + key!r}"
        if not _is_a(parts[key], tp):
            return f"has {prefix + key!r} of type {type(parts[key]).__name__}"
    unknown = sorted(map(str, set(parts) - set(expected)))
    return f"has an unknown {prefix + unknown[0]!r}" if unknown else None


def _is_a(value: Any, tp: Any) -> bool:
    """isinstance against a type hint (``float``, ``dict[str, list]``, ``torch.Tensor | None``);
    an int is a float, a bool is neither."""
    if isinstance(tp, types.UnionType):
        return any(_is_a(value, arg) for arg in tp.__args__)
    tp = typing.get_origin(tp) or tp
    if tp is type(None):
        return value is None
    if tp in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if tp is float else tp)


def restore(state: dict[str, Any], cfg: RunConfig, model, opt, sched, gen: torch.Generator,
            dev: torch.device) -> Progress:
    """Load a :func:`capture` checkpoint into fresh objects; returns the loop's progress."""
    problem = checkpoint_problem(state, cfg)
    if problem is not None:
        raise ValueError(f"the checkpoint {problem}; rerun from epoch 0")
    return _apply(state, model, opt, sched, gen, dev)


def _apply(state: dict[str, Any], model, opt, sched, gen: torch.Generator, dev: torch.device) -> Progress:
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    rng = state["rng"]
    gen.set_state(rng["gen"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    kind, keys, *rest = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    random.setstate(rng["python"])
    saved = copy.deepcopy(state["progress"])  # the loop appends to its lists; the caller's state stays as given
    if saved["best_state"] is not None:
        saved["best_state"] = {k: v.to(dev) for k, v in saved["best_state"].items()}
    return Progress(**saved)


def train(
    cfg: RunConfig,
    tracker: Tracker | None = None,
    *,
    device: str | None = "auto",
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    checkpoints: Checkpoints | None = None,
    resume: dict[str, Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RunResult | None:
    """Train one configuration and evaluate its best checkpoint; None when it was asked to stop.

    Args:
        cfg: the resolved run configuration.
        tracker: receives per-epoch values and the summary metrics.
        device: ``auto``, ``cpu`` or ``cuda[:i]``.
        on_epoch: called after each epoch with (epoch, values); may raise to stop the run
            (the tuner raises ``optuna.TrialPruned`` through it).
        checkpoints: gets a checkpoint (:func:`capture`) at epoch ends when it is due, and
            at the next batch boundary when a stop is requested.
        resume: a checkpoint to continue from, exactly where it was taken (mid-epoch too).
        should_stop: polled after every batch (the caller's signal flag); once it is true the
            loop writes a checkpoint and returns None, and the caller ends the run.

    Raises:
        TrainingDiverged: the training or validation loss became non-finite.
    """
    tracker = tracker or NullTracker()
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)

    # Data: resident on the device as uint8, normalised per batch.
    splits = load_splits(cfg.data, dev)
    tracker.log_data(describe_data(cfg, splits))
    channels_last = cuda  # conv kernels prefer NHWC on tensor cores
    autocast = set_precision(resolve_precision(cfg, dev), dev)

    # Model and optimizer. Batch-Instance gates get no weight decay and are clamped to [0, 1] after each step.
    model = build_model(cfg, splits).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if cfg.train.compile else model
    gates = gate_parameters(model)
    opt = make_optimizer(cfg, model)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.schedule.step_size, gamma=cfg.schedule.gamma)
    gen = torch.Generator().manual_seed(cfg.seed)
    p = restore(resume, cfg, model, opt, sched, gen, dev) if resume is not None else Progress()

    def checkpoint() -> None:
        if checkpoints is not None:
            checkpoints.save(capture(cfg, model, opt, sched, gen, p))

    done = p.epoch >= cfg.train.max_epochs or (p.epoch > 0 and p.stale >= cfg.train.patience)
    while not done:
        # Train one epoch. Loss and accuracy accumulate on the device: one sync per epoch.
        # A mid-epoch resume draws the epoch's order again from the saved generator state and
        # skips the batches already trained, with the epoch's sums so far.
        model.train()
        lr = opt.param_groups[0]["lr"]
        if p.batch == 0:
            p.epoch_rng, p.loss_sum, p.correct, p.seen = gen.get_state(), 0.0, 0, 0
        else:
            gen.set_state(p.epoch_rng)
        loss_sum = torch.tensor(p.loss_sum, device=dev)
        correct = torch.tensor(p.correct, device=dev, dtype=torch.long)
        t0 = time.perf_counter()
        batches = train_batches(splits, cfg.data.batch_size, gen, augment=cfg.data.augment,
                                channels_last=channels_last)
        for x, y in itertools.islice(batches, p.batch, None):
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
            p.seen += len(y)
            p.batch += 1
            if should_stop is not None and should_stop():
                p.loss_sum, p.correct = loss_sum.item(), int(correct.item())  # one sync, only when stopping
                p.train_seconds += time.perf_counter() - t0
                checkpoint()
                return None
        train_loss = loss_sum.item() / p.seen
        if cuda:
            torch.cuda.synchronize()
        p.step_seconds += time.perf_counter() - t0
        p.images_seen += p.seen
        sched.step()
        p.epoch, p.batch = p.epoch + 1, 0
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"non-finite training loss ({train_loss}) at epoch {p.epoch}; lower optim.lr")

        # Validate, probe, record.
        val_loss, val_pred = predict(model, splits, "val", cfg.data.eval_batch_size, autocast, channels_last)
        if not math.isfinite(val_loss):
            raise TrainingDiverged(f"non-finite validation loss ({val_loss}) at epoch {p.epoch}; lower optim.lr")
        values = {
            names.TRAIN_LOSS: train_loss,
            names.TRAIN_ACC: correct.item() / p.seen,
            names.VAL_LOSS: val_loss,
            **M.classification_metrics(splits.val_y.cpu().numpy(), val_pred, "val", splits.num_classes),
            names.LR: lr,
            **probe(model, splits, autocast, channels_last, cfg.train.probe_method),
        }
        for k in EPOCH_METRICS:
            p.history[epoch_key(k)].append(values[k])
        p.epoch_times.append(int(time.time() * 1000))
        tracker.log_epoch(p.epoch, values)
        if on_epoch is not None:
            on_epoch(p.epoch, values)

        # Early stopping on validation loss; keep the best weights.
        if val_loss < p.best_loss:
            p.best_loss, p.best_epoch, p.stale = val_loss, p.epoch, 0
            p.best_state = copy.deepcopy(model.state_dict())
        else:
            p.stale += 1
        p.train_seconds += time.perf_counter() - t0
        done = p.stale >= cfg.train.patience or p.epoch >= cfg.train.max_epochs
        if not done and should_stop is not None and should_stop():
            checkpoint()
            return None
        if not done and checkpoints is not None and checkpoints.due():
            checkpoint()

    # Restore the best checkpoint and evaluate it on every split.
    model.load_state_dict(p.best_state)
    summary: dict[str, float] = {}
    predictions = {}
    for split in SPLITS:
        _, pred = predict(model, splits, split, cfg.data.eval_batch_size, autocast, channels_last)
        truth = getattr(splits, f"{split}_y").cpu().numpy()
        predictions[split] = (truth, pred)
        summary.update(M.classification_metrics(truth, pred, split, splits.num_classes))
    summary.update({
        names.BEST_EPOCH: p.best_epoch,
        names.EPOCHS_RUN: p.epoch,
        names.TRAIN_SECONDS: p.train_seconds,
        names.IMAGES_PER_SECOND: p.images_seen / p.step_seconds if p.step_seconds > 0 else 0.0,
    })
    tracker.log_summary(summary)

    example = splits.normalize(splits.val_x[:2], channels_last=channels_last).float()
    return RunResult(summary=summary, history=p.history, best_epoch=p.best_epoch, model=model.float().eval(),
                     predictions=predictions, class_names=list(splits.class_names), example=example,
                     epoch_times=p.epoch_times)
