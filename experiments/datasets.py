"""The raw datasets: what a loader returns (:class:`RawDataset`), and the digits and CIFAR-10 loaders.

A loader takes the run's :class:`~experiments.config.DataConfig` and returns every image
as one uint8 ``(N, C, H, W)`` tensor per split, on the CPU, before any carving; the
registry :data:`experiments.data.DATASETS` names the loaders and :mod:`experiments.data`
carves the splits. The imagefolder loader, with its decode cache, is
:mod:`experiments.imagefolder`. torchvision is imported inside the loader that needs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from sklearn.datasets import load_digits

from experiments.config import DataConfig
from experiments.errors import UserError

DIGITS_MAX = 16  # sklearn's digits are 4-bit intensities 0–16


class DatasetError(UserError):
    """Bad or missing data: the message says what is wrong and how to fix it."""


class RawDataset(NamedTuple):
    """What a loader returns, on the CPU, before any carving.

    ``test_x``/``test_y`` are None when the dataset has no test split of its own.
    """

    train_x: torch.Tensor  # uint8 (N, C, H, W)
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor | None
    test_y: torch.Tensor | None
    class_names: list[str]


# ---------------------------------------------------------------------------- digits


def read_digits(cfg: DataConfig) -> RawDataset:
    """sklearn's 8×8 digits (1797 images, 10 classes); ships with sklearn, no download."""
    digits = load_digits()
    x = np.rint(digits.images * (255.0 / DIGITS_MAX)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    y = digits.target.astype(np.int64)
    names = [str(t) for t in digits.target_names]
    return RawDataset(torch.from_numpy(x), torch.from_numpy(y), None, None, names)


# --------------------------------------------------------------------------- cifar10


def dataset_root(cfg: DataConfig) -> Path:
    """``data.root`` with ~ expanded; a dataset that needs a root and has none is refused."""
    if not cfg.root:
        raise DatasetError(
            f"dataset {cfg.name!r} needs data.root, the folder that holds it (e.g. --set data.root=~/data)"
        )
    return Path(cfg.root).expanduser()


def read_cifar10(cfg: DataConfig) -> RawDataset:
    """torchvision's pickled CIFAR-10 (root/cifar-10-batches-py), arrays used as they are."""
    from torchvision.datasets import CIFAR10

    root = dataset_root(cfg)
    try:
        train = CIFAR10(str(root), train=True, download=cfg.download)
        test = CIFAR10(str(root), train=False, download=cfg.download)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        raise DatasetError(
            f"CIFAR-10 is not at {root} (expected {root / 'cifar-10-batches-py'}; torchvision says: {err}); "
            "set data.download=true to fetch it there, or use data.name=imagefolder with data.root "
            "pointing at an extracted JPEG tree (e.g. the cifar10/ folder of cifar10-jpeg.tar.xz)"
        ) from None
    except OSError as err:  # download failed: no network, no space, read-only root
        raise DatasetError(
            f"could not download CIFAR-10 into {root}: {err}; download it elsewhere and set data.root, "
            "or use data.name=imagefolder with an extracted JPEG tree"
        ) from None

    def tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()  # NHWC → NCHW
        return x, torch.tensor(ds.targets, dtype=torch.int64)

    train_x, train_y = tensors(train)
    test_x, test_y = tensors(test)
    return RawDataset(train_x, train_y, test_x, test_y, list(train.classes))
