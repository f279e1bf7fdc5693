"""Checkpoints of the training loop: a run stopped anywhere and resumed from its
checkpoint ends bitwise equal to the same run uninterrupted (on the CPU)."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import torch

from experiments.config import build
from experiments.train import checkpoint_problem, train

CFG = build({"train.max_epochs": 4, "train.patience": 4, "data.batch_size": 64, "model.depth_n": 1,
             "data.augment": True, "model.norm": "bin", "optim.momentum": 0.9})
TIMING = ("train_seconds", "images_per_second")


class StopAfter:
    """Requests a stop after ``batches`` training steps; keeps every checkpoint, serialised."""

    def __init__(self, batches: int | None, every_epoch: bool = False):
        self.left, self.every_epoch, self.saved = batches, every_epoch, []

    def due(self) -> bool:
        return self.every_epoch

    def save(self, state) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)  # what the orchestrator writes: it must survive serialisation
        self.saved.append(buf.getvalue())

    def should_stop(self) -> bool:
        if self.left is None:
            return False
        self.left -= 1
        return self.left < 0

    def last(self):
        return torch.load(io.BytesIO(self.saved[-1]), weights_only=True)


def same(a, b) -> None:
    strip = lambda s: {k: v for k, v in s.items() if k not in TIMING}  # noqa: E731
    assert strip(a.summary) == strip(b.summary)
    assert a.history == b.history
    for (k, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), k


@pytest.fixture(scope="module")
def uninterrupted():
    return train(CFG, device="cpu")


@pytest.mark.parametrize("stop_after", [3, 22, 29, 58])  # mid-epoch 1, the end of epoch 1, mid-epoch 2, epoch 3
def test_stopped_and_resumed_equals_uninterrupted(uninterrupted, stop_after):
    first = StopAfter(stop_after)
    assert train(CFG, device="cpu", checkpoints=first, should_stop=first.should_stop) is None  # stopped
    assert len(first.saved) == 1
    state = first.last()
    resumed = train(CFG, device="cpu", resume=state)
    same(resumed, uninterrupted)
    done = state["progress"]["epoch"]
    assert len(state["progress"]["epoch_times"]) == done  # the checkpoint is not changed by resuming it
    assert resumed.epoch_times[:done] == state["progress"]["epoch_times"]


def test_periodic_checkpoints_at_epoch_ends_resume_exactly(uninterrupted):
    keeper = StopAfter(None, every_epoch=True)
    train(CFG, device="cpu", checkpoints=keeper)
    assert len(keeper.saved) == CFG.train.max_epochs - 1  # none after the last epoch: the run is done
    second = torch.load(io.BytesIO(keeper.saved[1]), weights_only=True)
    assert (second["progress"]["epoch"], second["progress"]["batch"]) == (2, 0)
    same(train(CFG, device="cpu", resume=second), uninterrupted)


def test_a_checkpoint_of_another_config_is_refused():
    keeper = StopAfter(1)
    assert train(CFG, device="cpu", checkpoints=keeper, should_stop=keeper.should_stop) is None
    other = build({**{"train.max_epochs": 5}, "data.batch_size": 64})
    with pytest.raises(ValueError, match="another config"):
        train(other, device="cpu", resume=keeper.last())


@pytest.fixture(scope="module")
def stopped_once():
    """A real checkpoint: CFG stopped after its first batch."""
    keeper = StopAfter(1)
    assert train(CFG, device="cpu", checkpoints=keeper, should_stop=keeper.should_stop) is None
    return keeper.last()


@pytest.mark.parametrize("damage, problem", [
    (lambda s: None, None),
    (lambda s: torch.zeros(3), "is a Tensor, not a checkpoint"),
    (lambda s: {k: v for k, v in s.items() if k != "progress"}, "lacks 'progress'"),
    (lambda s: {**s, "format": 2}, "has format 2, not 1"),
    (lambda s: {**s, "progress": {**s["progress"], "epoch": "1"}}, "has 'progress.epoch' of type str"),
    (lambda s: {**s, "progress": {**s["progress"], "extra": 0}}, "has an unknown 'progress.extra'"),
    (lambda s: {**s, "rng": {**s["rng"], "numpy": None}}, "has 'rng.numpy' of type NoneType"),
    (lambda s: {**s, "model": {**s["model"], "w": [0.0]}}, "has a model that is not all tensors"),
    (lambda s: {**s, "config": {**s["config"], "seed": 1}}, "holds another config"),
])
def test_a_checkpoint_is_checked_as_a_whole_before_it_is_used(stopped_once, damage, problem):
    damaged = damage(stopped_once)
    assert checkpoint_problem(stopped_once if damaged is None else damaged, CFG) == problem
    if problem is not None:  # the training loop refuses it too
        with pytest.raises(ValueError, match=re.escape(problem)):
            train(CFG, device="cpu", resume=damaged)


def _renamed_first(d: dict) -> dict:
    first = next(iter(d))
    return {("bogus" if k == first else k): v for k, v in d.items()}


@pytest.mark.parametrize("damage, start", [
    (lambda s: {**s, "model": _renamed_first(s["model"])}, "does not load into its model"),
    (lambda s: {**s, "model": {("bogus" if k == "head.bias" else k): v for k, v in s["model"].items()}},
     "does not load into its model (RuntimeError"),
    (lambda s: {**s, "optimizer": {**s["optimizer"], "param_groups": []}}, "does not load into its model (ValueError"),
    (lambda s: {**s, "rng": {**s["rng"], "gen": torch.zeros(3, dtype=torch.uint8)}}, "does not load into its model"),
    (lambda s: {**s, "rng": {**s["rng"], "numpy": ("MT19937",)}}, "does not load into its model (ValueError"),
    (lambda s: {**s, "progress": {**s["progress"], "epoch": -3}}, "has a negative progress"),
    (lambda s: {**s, "progress": {**s["progress"], "history": {"nope": []}}}, "has a progress.history of other"),
    (lambda s: {**s, "progress": {**s["progress"], "epoch": 2}}, "has a progress.history that does not hold"),
])
def test_a_checkpoint_whose_contents_do_not_fit_is_refused_before_it_is_used(stopped_once, damage, start):
    # Right types, wrong contents: each of these failed inside the training loop, every attempt, before.
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    problem = checkpoint_problem(damage(stopped_once), CFG)
    assert problem is not None and problem.startswith(start), problem
    assert torch.equal(torch.get_rng_state(), torch_state)  # the trial load leaves the process's RNGs alone
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])


def test_a_checkpoint_with_epochs_but_no_best_state_is_refused(stopped_once):
    full = StopAfter(None, every_epoch=True)  # a checkpoint at every epoch's end
    train(CFG, device="cpu", checkpoints=full)
    saved = [torch.load(io.BytesIO(b), weights_only=True) for b in full.saved]
    after_epoch = next(s for s in saved if s["progress"]["epoch"] >= 1)
    assert checkpoint_problem(after_epoch, CFG) is None
    broken = {**after_epoch, "progress": {**after_epoch["progress"], "best_state": None}}
    assert "but no best_state" in checkpoint_problem(broken, CFG)
