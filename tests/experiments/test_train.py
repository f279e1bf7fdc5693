"""The training loop without MLflow: metrics agree with scikit-learn, runs are repeatable."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from experiments.config import build
from experiments.metrics import classification_metrics, confusion
from experiments.train import NullTracker, TrainingDiverged, train

FAST = {"train.max_epochs": 3, "data.batch_size": 64, "model.depth_n": 1}
TIMING = ("train_seconds", "images_per_second")


def _manual_f1(y, p, k):
    scores = []
    for c in range(k):
        tp = np.sum((p == c) & (y == c))
        fp = np.sum((p == c) & (y != c))
        fn = np.sum((p != c) & (y == c))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def test_metrics_agree_with_sklearn_and_by_hand():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, 500)
    p = np.where(rng.random(500) < 0.6, y, rng.integers(0, 7, 500))
    m = classification_metrics(y, p, "val", 7)
    assert m["val_acc"] == pytest.approx(np.mean(y == p))
    assert m["val_f1_micro"] == pytest.approx(f1_score(y, p, average="micro"))
    assert m["val_f1_micro"] == pytest.approx(np.mean(y == p))
    assert m["val_f1_macro"] == pytest.approx(f1_score(y, p, average="macro"))
    assert m["val_f1_macro"] == pytest.approx(_manual_f1(y, p, 7))
    cm = confusion(y, p, 7)
    assert cm.sum() == 500 and np.trace(cm) == np.sum(y == p)
    assert cm[2].sum() == np.sum(y == 2)  # rows are true labels


def test_f1_macro_counts_a_class_absent_from_the_split():
    """Class 3 of 4 is in neither the labels nor the predictions (a small split): it counts
    as an F1 of 0, so the macro average is over 4 classes, not the 3 present."""
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([0, 1, 1, 1, 2, 0])
    m = classification_metrics(y, p, "val", 4)
    assert m["val_f1_macro"] == pytest.approx(f1_score(y, p, labels=[0, 1, 2, 3], average="macro", zero_division=0))
    assert m["val_f1_macro"] == pytest.approx(_manual_f1(y, p, 4))
    assert m["val_f1_macro"] == pytest.approx(f1_score(y, p, average="macro") * 3 / 4)


class Recorder(NullTracker):
    def __init__(self):
        self.epochs, self.summary = [], {}

    def log_epoch(self, epoch, values):
        self.epochs.append((epoch, dict(values)))

    def log_summary(self, values):
        self.summary = dict(values)


def test_same_seed_same_results_on_cpu():
    cfg = build(FAST)
    a, b = train(cfg, device="cpu"), train(cfg, device="cpu")
    strip = lambda s: {k: v for k, v in s.items() if k not in TIMING}  # noqa: E731
    assert strip(a.summary) == strip(b.summary)
    assert a.history == b.history
    c = train(build({**FAST, "seed": 1}), device="cpu")
    assert c.history["epoch/train_loss"] != a.history["epoch/train_loss"]


def test_summary_comes_from_the_restored_best_epoch():
    rec = Recorder()
    result = train(build({**FAST, "train.max_epochs": 4}), rec, device="cpu")
    assert [e for e, _ in rec.epochs] == [1, 2, 3, 4]
    best = min(rec.epochs, key=lambda e: e[1]["val_loss"])
    assert result.best_epoch == best[0] == rec.summary["best_epoch"]
    # The restored model's validation F1 equals the F1 logged at the best epoch.
    assert rec.summary["val_f1_macro"] == pytest.approx(best[1]["val_f1_macro"], abs=1e-12)
    assert rec.summary["epochs_run"] == 4


def test_bin_gates_stay_in_range():
    from models import gate_parameters

    # Gates start on the boundary (rho = 1): every step that pushes one up must be undone.
    result = train(build({**FAST, "model.norm": "bin", "model.bin_rho": 1.0, "optim.lr": 0.5,
                          "optim.weight_decay": 0.1, "schedule.gamma": 1.0}), device="cpu")
    gates = gate_parameters(result.model)
    assert len(gates) == 1 + 3 * 1 * 2 + 2  # stem, two per block (n=1), two projections
    values = torch.cat([g.detach().flatten() for g in gates])
    assert float(values.min()) >= 0.0 and float(values.max()) <= 1.0
    assert bool((values == 1.0).any()) and bool((values < 1.0).any())  # some pushed up and clamped, some moved


def test_optimizer_excludes_gates_from_weight_decay():
    from experiments.train import make_optimizer
    from models import ResNet, gate_parameters

    cfg = build({"model.norm": "bin", "optim.weight_decay": 5e-4})
    model = ResNet(n=1, norm="bin")
    opt = make_optimizer(cfg, model)
    gate_ids = {id(p) for p in gate_parameters(model)}
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    undecayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert gate_ids and gate_ids == undecayed
    assert decayed == {id(p) for p in model.parameters()} - gate_ids


def test_non_finite_loss_raises():
    with pytest.raises(TrainingDiverged, match="non-finite"):
        train(build({**FAST, "optim.lr": 1e6}), device="cpu")
