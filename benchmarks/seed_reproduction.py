"""The report's §1 recipe with orch's defaults vs the original code's choices, side by side.

The recipe (``experiments/grids/seed_norms.yaml``, ``model.norm=bn_torch``): PyTorch's
BatchNorm ResNet-14 on CIFAR-10 (the JPEG tree), batch 128, SGD lr 0.1, StepLR step 5
gamma 0.2, at most 50 epochs, early stopping with patience 5 on validation loss, float32,
seed 0; the checkpoint with the lowest validation loss is evaluated on every split. Each
variant is that config with a set of knobs changed:

* ``defaults``: orch's defaults (seed_norms.yaml; PyTorch's default init, as the original);
* ``original``: every knob of ``experiments/grids/seed_original.yaml`` (the original code's
  choices: conv biases, unpadded stem, tail validation carve, per-pixel standardisation, ...);
* single-knob variants for finding which choice matters: ``kaiming`` (Kaiming fan-out
  init, orch's default until 2026-12-06), ``bias``, ``stem``, ``val_tail``, ``pixel``.

Each variant trains in this process through ``experiments.train.train`` (nothing logged
to MLflow: this measures the recipe, not the tracking) and the table shows train / val /
test accuracy and macro-F1 of the evaluated checkpoint beside the report's numbers, the
training loss after epochs 1, 5 and 10, the best epoch and the epochs run, and the validation
accuracy of the last epoch: the original code evaluated its last model, not its best one.

Usage::

    python benchmarks/seed_reproduction.py --out benchmarks/results/seed_reproduction_cpu.md   # ~1 h on 2 CPU cores
    python benchmarks/seed_reproduction.py --variants defaults,kaiming,bias,stem,val_tail,pixel --max-epochs 5 \\
        --out benchmarks/results/seed_diagnosis_cpu.md                                        # which knob matters

The data is ``--root`` (a tree with train/ and test/), else ../shared/data/cifar10-jpeg.tar.xz
extracted to a temporary folder.
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import cpu_model, finish  # noqa: E402

TARBALL = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"
REPORT = {"train_acc": 0.913, "val_acc": 0.791, "test_acc": 0.783,
          "train_f1_macro": 0.913, "val_f1_macro": 0.790, "test_f1_macro": 0.783}  # report §2.2, BN (torch)
GRIDS = {"defaults": "seed_norms.yaml", "original": "seed_original.yaml"}
SINGLE_KNOBS = {  # variant -> the one override on top of the defaults
    "kaiming": "model.init=kaiming_fan_out",
    "bias": "model.conv_bias=true",
    "stem": "model.stem_padding=0",
    "val_tail": "data.val_split=tail",
    "pixel": "data.standardize=pixel",
}
LOSS_AT = (1, 5, 10)


def config(variant: str, root: Path, extra: list[str]):
    from orchestrator.grid.load import load_grid

    grid = ROOT / "experiments" / "grids" / GRIDS.get(variant, GRIDS["defaults"])
    overrides = ["model.norm=bn_torch", "data.batch_size=128", "seed=0", f"data.root={root}", *extra]
    if variant in SINGLE_KNOBS:
        overrides.append(SINGLE_KNOBS[variant])
    (run,) = load_grid(grid, overrides).runs
    return run.config


def data_root(root: str | None, tmp: Path) -> Path:
    if root:
        return Path(root).expanduser()
    if not TARBALL.exists():
        sys.exit(f"no --root given and {TARBALL} is absent; pass --root DIR (train/ and test/ inside)")
    with tarfile.open(TARBALL) as tar:
        tar.extractall(tmp, filter="data")
    return tmp / "cifar10"


def run_variant(variant: str, cfg, device: str) -> dict:
    from experiments.metric_names import VAL_SCORES, epoch_key
    from experiments.train import NullTracker, train

    losses: dict[int, float] = {}

    def on_epoch(epoch: int, values: dict) -> None:
        losses[epoch] = values["train_loss"]
        print(f"  [{variant}] epoch {epoch:>3}  train_loss {values['train_loss']:.4f}  val_loss {values['val_loss']:.4f}"
              f"  val_acc {values['val_acc']:.4f}", flush=True)

    t0 = time.perf_counter()
    result = train(cfg, NullTracker(), device=device, on_epoch=on_epoch)
    last_val_acc = result.history[epoch_key(VAL_SCORES[0])][-1]
    return {**result.summary, "losses": losses, "last_val_acc": last_val_acc, "seconds": time.perf_counter() - t0}


def table(rows: dict[str, dict]) -> str:
    cols = ["train_acc", "val_acc", "test_acc", "train_f1_macro", "val_f1_macro", "test_f1_macro"]
    head = ["variant", *cols, *(f"train_loss@{e}" for e in LOSS_AT), "best_epoch", "epochs_run", "val_acc, last epoch",
            "minutes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append("| report (BN torch) | " + " | ".join(f"{REPORT[c]:.3f}" for c in cols)
                 + " |" + " – |" * (len(LOSS_AT) + 4))
    for name, r in rows.items():
        losses = [f"{r['losses'][e]:.3f}" if e in r["losses"] else "–" for e in LOSS_AT]
        gap = [f"{r[c]:.3f}" for c in cols]
        lines.append(f"| {name} | " + " | ".join(gap + losses) + f" | {int(r['best_epoch'])} | {int(r['epochs_run'])}"
                     f" | {r['last_val_acc']:.3f} | {r['seconds'] / 60:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="defaults,original",
                        help=f"comma-separated: {', '.join([*GRIDS, *SINGLE_KNOBS])}")
    parser.add_argument("--root", help="CIFAR-10 tree (train/, test/); default: the shared tarball, extracted")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-epochs", type=int, default=None, help="cut every variant to this many epochs")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in GRIDS and v not in SINGLE_KNOBS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}")
    extra = list(args.extra) + ([f"train.max_epochs={args.max_epochs}"] if args.max_epochs else [])

    import torch

    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="orch-seed-") as tmp:
        root = data_root(args.root, Path(tmp))
        for variant in variants:
            cfg = config(variant, root, extra)
            print(f"{variant}: {cfg}", flush=True)
            rows[variant] = run_variant(variant, cfg, args.device)
            print(table(rows), flush=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else cpu_model()
    header = [
        "# The report's §1 recipe: orch's defaults vs the original code's choices",
        "",
        f"- command: `python benchmarks/seed_reproduction.py {' '.join(sys.argv[1:])}`",
        f"- machine: {device}, {torch.get_num_threads()} torch threads; torch {torch.__version__}; "
        f"{datetime.date.today().isoformat()}",
        "- recipe: bn_torch, batch 128, SGD lr 0.1, StepLR 5/0.2, patience 5 on val loss, float32, seed 0; "
        "best-val-loss checkpoint evaluated; CIFAR-10 JPEG tree, 10,000 validation images"
        + (f"; cut to {args.max_epochs} epochs" if args.max_epochs else ""),
        "",
    ]
    finish(header, table(rows), args.out)
    if any(not math.isfinite(r["test_acc"]) for r in rows.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
