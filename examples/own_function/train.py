"""A small PyTorch MLP on scikit-learn's 8x8 digits: a function entry for orch (``entry: train:main``).

orch calls ``main(config, run)`` once per point of the grid: ``config`` holds the grid's keys
(``lr``, ``width``, ...), ``run.seed`` the point's seed. The function logs its curves with
``run.log``, hands orch a checkpoint at every epoch's end and, when orch asks it to stop
(``run.should_stop()``: SIGTERM, Ctrl-C, the tuner's pruner), returns; the rerun continues from
that checkpoint and ends with the same numbers, bit for bit, as a run never stopped. That takes
every source of randomness in the checkpoint: the model and optimizer, the generator that
orders the batches and torch's global RNG (dropout draws from it).

Without orch, give it the stand-in run that records nothing (seed 0)::

    python -c "import train; from orchestrator.client import current
    print(train.main({'epochs': 3, 'lr': 0.05, 'width': 32, 'act': 'relu'}, current()))"
"""

from __future__ import annotations

import csv

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

SPLIT_SEED = 0  # the train/val/test split is the same for every point and seed: only the model varies
BATCH_SIZE = 64
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def load_data() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Digits as float pixels in [0, 1] and labels, split 60/20/20 (stratified) by SPLIT_SEED."""
    x, y = load_digits(return_X_y=True)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, stratify=y, random_state=SPLIT_SEED)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, stratify=y_rest,
                                                    random_state=SPLIT_SEED)
    splits = {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}
    return {name: (torch.tensor(xs / 16.0, dtype=torch.float32), torch.tensor(ys)) for name, (xs, ys) in splits.items()}


def make_model(width: int, act: str, dropout: float) -> nn.Module:
    """64 pixels → two hidden layers of ``width`` → 10 classes."""
    if act not in ACTIVATIONS:
        raise ValueError(f"act: {act!r} is not one of {sorted(ACTIVATIONS)}")
    return nn.Sequential(nn.Linear(64, width), ACTIVATIONS[act](), nn.Dropout(dropout),
                         nn.Linear(width, width), ACTIVATIONS[act](), nn.Dropout(dropout),
                         nn.Linear(width, 10))


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    return model(x).argmax(dim=1)


def train_epoch(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                gen: torch.Generator) -> float:
    """One pass over the training set in an order drawn from ``gen``; the mean training loss."""
    model.train()
    order = torch.randperm(len(x), generator=gen)
    total = 0.0
    for batch in order.split(BATCH_SIZE):
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.item() * len(batch)
    return total / len(x)


def main(config: dict, run) -> dict | None:
    """Train one point; its summary metrics, or None when orch asked it to stop."""
    torch.set_num_threads(1)  # a model this small is fastest on one thread, and sums in one order
    data = load_data()
    torch.manual_seed(run.seed)  # the model's initial weights, then dropout
    model = make_model(config["width"], config["act"], config.get("dropout", 0.0))
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=0.9)
    gen = torch.Generator().manual_seed(run.seed)  # the batch order, separate from the weights
    start = 0

    state = run.load_checkpoint()  # None on a fresh start; the state saved last when resuming
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["rng"]["batches"])
        torch.set_rng_state(state["rng"]["torch"])
        start = state["epoch"]

    x_val, y_val = data["val"]
    for epoch in range(start, config["epochs"]):
        train_loss = train_epoch(model, opt, *data["train"], gen)
        val_acc = (predict(model, x_val) == y_val).float().mean().item()
        run.log({"val_acc": val_acc, "train_loss": train_loss}, step=epoch + 1)
        # Everything the next epoch depends on: orch copies it now, writes it when due.
        run.save_checkpoint({"epoch": epoch + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
                             "rng": {"batches": gen.get_state(), "torch": torch.get_rng_state()}})
        if run.should_stop():
            return None

    x_test, y_test = data["test"]
    predicted = predict(model, x_test)
    write_confusion_matrix(run.artifact_dir / "confusion_matrix.csv", y_test, predicted)
    return {"test_acc": (predicted == y_test).float().mean().item(),
            "val_acc": (predict(model, x_val) == y_val).float().mean().item()}


def write_confusion_matrix(path, truth: torch.Tensor, predicted: torch.Tensor) -> None:
    """Rows: the true digit; columns: the predicted one."""
    counts = torch.zeros(10, 10, dtype=torch.int64)
    counts.index_put_((truth, predicted), torch.ones_like(truth), accumulate=True)
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["true\\predicted", *range(10)])
        out.writerows([digit, *row] for digit, row in enumerate(counts.tolist()))
