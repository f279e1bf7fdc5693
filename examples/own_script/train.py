"""Train scikit-learn's MLPClassifier on its 8x8 digits, one epoch at a time: an ordinary
argparse script that orch can sweep as a command entry, and that still runs by hand::

    python train.py --lr 0.1 --width 32 --seed 0 --epochs 3

It talks to orch through ``orchestrator.client.current()`` only: under ``orch sweep`` that is
the point's run (metrics, checkpoints, stop requests), run by hand a stand-in that records
nothing. Everything orch needs from it is in the lines marked ``# orch``.
"""

from __future__ import annotations

import argparse
import sys

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from orchestrator.client import current  # orch

SPLIT_SEED = 0  # the train/val/test split is the same for every run: only the model varies
DIGITS = list(range(10))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lr", type=float, default=0.1, help="SGD's initial learning rate")
    parser.add_argument("--width", type=int, default=32, help="units in the hidden layer")
    parser.add_argument("--seed", type=int, default=0, help="initial weights and batch order")
    parser.add_argument("--epochs", type=int, default=10, help="passes over the training set")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.lr <= 0:
        print(f"train.py: --lr must be positive, got {args.lr}", file=sys.stderr)
        sys.exit(3)
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, stratify=y, random_state=SPLIT_SEED)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, stratify=y_rest,
                                                    random_state=SPLIT_SEED)

    run = current()  # orch
    state = run.load_checkpoint()  # orch: None on a fresh start
    if state is None:
        model = MLPClassifier(hidden_layer_sizes=(args.width,), solver="sgd", learning_rate_init=args.lr,
                              momentum=0.9, batch_size=64, random_state=args.seed)
        start = 0
    else:  # the estimator as pickled at the end of the epoch it had completed
        model, start = state["model"], state["epoch"]

    for epoch in range(start, args.epochs):
        model.partial_fit(x_train, y_train, classes=DIGITS)
        val_acc = model.score(x_val, y_val)
        print(f"epoch {epoch + 1}: train_loss {model.loss_:.4f}  val_acc {val_acc:.4f}", flush=True)
        run.log({"train_loss": model.loss_, "val_acc": val_acc}, step=epoch + 1)  # orch
        run.save_checkpoint({"epoch": epoch + 1, "model": model})  # orch
        if run.should_stop():  # orch: SIGTERM or Ctrl-C under orch; the checkpoint above is kept
            print(f"stopping after epoch {epoch + 1}", flush=True)
            return

    test_acc = model.score(x_test, y_test)
    print(f"test_acc {test_acc:.4f}")
    run.log({"test_acc": test_acc}, step=args.epochs)  # orch: the final score, beside the curves


if __name__ == "__main__":
    main()
