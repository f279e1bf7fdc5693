"""Datasets by name, fixed train/val/test splits, and a device-resident batch loader.

Reads top to bottom: the dataset registry → splits → batches. The loaders live in
:mod:`experiments.datasets` (digits, cifar10) and :mod:`experiments.imagefolder` (any
image tree, with its decode cache); this module is what the training path imports.

Every dataset is held as one uint8 ``(N, C, H, W)`` tensor per split on the training
device (CIFAR-10 is 150 MB that way) and batches are cut by indexing it: no
DataLoader, no per-sample Python in the training loop. Normalisation and
augmentation run on whole batches on the device, so a GPU never waits for the host.

Splits are a pure function of the data and ``data.split_seed``; ``seed`` (model init,
batch order, augmentation) never changes which examples are validated on.

torch, numpy and scikit-learn are imported at module level because only the training
path imports this module; torchvision is imported inside the loaders that need it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from experiments.config import DATASET_NAMES, STANDARDIZATIONS, DataConfig
from experiments.datasets import DatasetError, RawDataset, read_cifar10, read_digits
from experiments.imagefolder import read_imagefolder

__all__ = ["DATASETS", "DatasetError", "RawDataset", "Splits", "eval_batches", "load_splits", "train_batches"]

SPLIT_NAMES = ("train", "val", "test")


# -------------------------------------------------------------------------- registry

# Dataset name → loader; load_splits refuses any other name, listing these.
DATASETS: dict[str, Callable[[DataConfig], RawDataset]] = {
    "digits": read_digits,
    "cifar10": read_cifar10,
    "imagefolder": read_imagefolder,
}
assert tuple(DATASETS) == DATASET_NAMES, "DATASETS must list exactly experiments.config.DATASET_NAMES"


# ---------------------------------------------------------------------------- splits


@dataclass(eq=False)  # tensors have no single truth value: compare by identity
class Splits:
    """Three labelled splits as uint8 images on one device, plus training-split statistics."""

    train_x: torch.Tensor  # uint8 (N, C, H, W)
    train_y: torch.Tensor  # int64 (N,)
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: torch.Tensor  # float32 (C,) per channel or (C, H, W) per pixel: mean of train_x / 255
    std: torch.Tensor  # float32, shaped as mean: population std of train_x / 255
    class_names: list[str]
    _scale: torch.Tensor = field(init=False, repr=False)
    _shift: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # (x/255 - mean)/std as one multiply-subtract: x * scale - shift, shaped (C, 1, 1) or (C, H, W).
        std = torch.where(self.std > 0, self.std, torch.ones_like(self.std))  # a constant channel/pixel stays finite
        shape = (-1, 1, 1) if self.std.dim() == 1 else self.std.shape
        self._scale = (1.0 / (255.0 * std)).to(torch.float32).reshape(shape)
        self._shift = (self.mean / std).to(torch.float32).reshape(shape)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    def normalize(self, x_uint8: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """uint8 (N, C, H, W) or (C, H, W) → float32 ``(x/255 - mean)/std`` on x's device.

        Per-pixel statistics apply by position: an augmented (cropped) image gets the
        statistics of the positions it lands on, so ink moved onto a position that is
        nearly constant in the training split (digits' borders) becomes very large.

        With ``channels_last`` a 4-D result is in ``torch.channels_last`` memory format
        (the uint8 input is converted first, a quarter of the bytes of converting floats).
        """
        if x_uint8.dim() == 4:
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            x_uint8 = x_uint8.contiguous(memory_format=fmt)
        return x_uint8.to(torch.float32).mul_(self._scale).sub_(self._shift)

    def to(self, device: torch.device | str) -> Splits:
        """A copy with every tensor on ``device``."""
        names = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y", "mean", "std")
        tensors = {k: getattr(self, k).to(device) for k in names}
        return Splits(**tensors, class_names=list(self.class_names))


def _carve_count(size: float, n: int) -> int:
    # The rule of sklearn's train_test_split: a fraction rounds up, a count is taken as is.
    return math.ceil(size * n) if size < 1 else int(size)


def _carve(
    y: np.ndarray, size: float, seed: int, key: str, what: str, class_names: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified carve of ``size`` examples out of labels ``y`` → (kept, carved) sorted indices."""
    n = len(y)
    if not size > 0:
        raise DatasetError(f"{key} must be greater than 0 (a fraction below 1 or a count), got {size}")
    k = _carve_count(size, n)
    labels, counts = np.unique(y, return_counts=True)
    n_classes = len(labels)
    if counts.min() < 2:
        name = class_names[int(labels[counts.argmin()])]
        raise DatasetError(
            f"class {name!r} has only {counts.min()} example left before the {what} carve; "
            "a stratified carve needs at least 2 per class: add examples or drop the class"
        )
    if k < n_classes:
        raise DatasetError(
            f"{key}={size:g} gives {k} {what} examples for {n_classes} classes; a stratified carve needs "
            f"at least one per class: use a count of at least {n_classes} or a fraction of at least {n_classes / n:.3g}"
        )
    if n - k < n_classes:
        raise DatasetError(
            f"{key}={size:g} takes {k} of {n} examples, leaving {n - k} for training, fewer than one per class "
            f"({n_classes}); use a count of at most {n - n_classes} or a smaller fraction"
        )
    kept, carved = train_test_split(np.arange(n), test_size=k, random_state=seed, stratify=y)
    return np.sort(kept), np.sort(carved)


def _carve_tail(
    y: np.ndarray, size: float, seed: int, key: str, what: str, class_names: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """The last examples of each class in stored order → (kept, carved) sorted indices.

    Each class gives its share of ``size`` (largest remainders round up). On the CIFAR-10
    JPEG tree, whose files are numbered in the order of the original batches, the last
    1,000 of each class stand in for the original code's validation set, data_batch_5
    (which holds about 1,000 of each class). ``seed`` is unused: nothing is random.
    """
    n = len(y)
    k = _carve_count(size, n) if size > 0 else 0
    labels, counts = np.unique(y, return_counts=True)
    if not 0 < k <= n - len(labels):
        raise DatasetError(f"{key}={size:g} gives {k} {what} examples of {n}; use a count from {len(labels)} "
                           f"to {n - len(labels)} or a fraction between them")
    exact = k * counts / n
    quota = np.floor(exact).astype(int)
    quota[np.argsort(quota - exact)[: k - quota.sum()]] += 1  # largest remainders first
    carved = np.concatenate([np.flatnonzero(y == c)[len(np.flatnonzero(y == c)) - q:] if q else np.empty(0, int)
                             for c, q in zip(labels, quota)])
    if any(q >= c for q, c in zip(quota, counts)):
        name = class_names[int(labels[int(np.argmax(quota - counts))])]
        raise DatasetError(f"{key}={size:g} would leave class {name!r} without training examples; use a smaller size")
    mask = np.zeros(n, dtype=bool)
    mask[carved] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


VAL_CARVES = {"stratified": _carve, "tail": _carve_tail}


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and population std of x/255 for uint8 (N, C, H, W).

    Exact, from a 256-bin histogram per channel (float64 over 256 values): 0.08 s for the
    40,000 CIFAR-10 training images on 2 CPU cores, against 1.1 s for float64 sums.
    """
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        counts = torch.bincount(x[:, c].reshape(-1), minlength=256).to(torch.float64)
        p = counts / counts.sum()
        mean = (p * values).sum()
        means.append(mean)
        stds.append((p * (values - mean).square()).sum().sqrt())
    return torch.stack(means).float(), torch.stack(stds).float()


def _pixel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel (and channel) mean and population std of x/255 over the N images of uint8
    (N, C, H, W): the mean and std images, each (C, H, W).

    Exact: integer sums over chunks of images (int64 holds n * sum(x^2) up to n of about
    10 million), so no float64 copy of the whole split (1 GB for CIFAR-10's training split).
    """
    n = x.shape[0]
    total = torch.zeros(x.shape[1:], dtype=torch.int64)
    squares = torch.zeros(x.shape[1:], dtype=torch.int64)
    for chunk in x.split(4096):
        wide = chunk.to(torch.int64)
        total += wide.sum(0)
        squares += wide.square().sum(0)
    mean = total.to(torch.float64) / (255.0 * n)
    var = (n * squares - total.square()).to(torch.float64) / (255.0 * n) ** 2
    return mean.float(), var.sqrt().float()


# data.standardize → the statistics taken of the training split.
STATISTICS = {"channel": _channel_stats, "pixel": _pixel_stats}
assert tuple(STATISTICS) == STANDARDIZATIONS, "STATISTICS must list exactly experiments.config.STANDARDIZATIONS"


def load_splits(cfg: DataConfig, device: torch.device | str = "cpu") -> Splits:
    """Load ``cfg.name`` and return train/val/test on ``device`` (moved there once).

    - val: ``cfg.val_size`` carved from the training split, stratified by class at random
      (``data.val_split=stratified``) or as the tail of each class (``tail``).
    - test: the dataset's own test split; digits has none, so ``cfg.test_size`` is carved
      from the full data first (stratified), then val from the rest.
    - A size below 1 is a fraction (rounded up), 1 or more a count. Both carves use
      ``cfg.split_seed`` only: identical on every call, whatever the run's ``seed``.
    - ``mean``/``std`` come from the training split after carving: one per channel
      (``data.standardize=channel``) or a mean and a std image (``pixel``, as the original
      study code did).

    Raises:
        DatasetError: unknown name, missing or malformed data, or sizes that leave a class empty.
    """
    if cfg.name not in DATASETS:
        raise DatasetError(f"unknown dataset {cfg.name!r}; choose data.name from {', '.join(DATASETS)}")
    raw = DATASETS[cfg.name](cfg)
    names = raw.class_names
    x, y = raw.train_x, raw.train_y
    if raw.test_x is None:
        keep, test_idx = _carve(y.numpy(), cfg.test_size, cfg.split_seed, "data.test_size", "test", names)
        test_x, test_y = x[test_idx], y[test_idx]
        x, y = x[keep], y[keep]
    else:
        test_x, test_y = raw.test_x, raw.test_y
    carve = VAL_CARVES[cfg.val_split]
    keep, val_idx = carve(y.numpy(), cfg.val_size, cfg.split_seed, "data.val_size", "validation", names)
    val_x, val_y = x[val_idx], y[val_idx]
    train_x, train_y = x[keep], y[keep]
    mean, std = STATISTICS[cfg.standardize](train_x)
    splits = Splits(train_x, train_y, val_x, val_y, test_x, test_y, mean, std, list(names))
    return splits.to(device)


# --------------------------------------------------------------------------- batches


def _crop_flip(
    x: torch.Tensor, idx: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather the augmented batch straight from the full uint8 tensor.

    Equivalent to: pad ``x[idx]`` by ``pad`` zeros on each side, crop H×W at offset
    (dy, dx) in [0, 2*pad], then mirror left-right where ``flip``. One advanced-indexing
    gather does all three for the whole batch; out-of-image positions are returned as a
    mask, to be zeroed after normalisation (zero padding in normalised space).

    Returns ``(images, inside)``: uint8 (B, C, H, W) with channels_last strides, and a bool
    (B, 1, H, W) that is False where the pixel came from padding.
    """
    _, _, h, w = x.shape
    rows = dy[:, None] - pad + torch.arange(h, device=x.device)  # (B, H) source rows
    cols_fwd = torch.arange(w, device=x.device)
    cols = dx[:, None] - pad + torch.where(flip[:, None], w - 1 - cols_fwd, cols_fwd)  # (B, W)
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    nhwc = x.permute(0, 2, 3, 1)  # a view: (N, H, W, C)
    out = nhwc[idx[:, None, None], rows.clamp(0, h - 1)[:, :, None], cols.clamp(0, w - 1)[:, None, :]]
    return out.permute(0, 3, 1, 2), inside[:, None]


def train_batches(
    splits: Splits,
    batch_size: int,
    generator: torch.Generator,
    augment: bool = False,
    channels_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled training batches: (float32 normalised x, int64 y) on the splits' device.

    All the epoch's randomness is drawn from ``generator`` when this is called: the
    permutation first, then (with ``augment``) every example's crop offset and flip, so
    CPU runs repeat exactly for a given seed and ``augment`` does not change the order.
    It is moved to the device once per epoch; batches are cut by indexing there.

    The last partial batch is kept, except a trailing batch of a single example when
    ``batch_size > 1``: BatchNorm cannot train on it, so that example sits out this epoch
    (it lands elsewhere in the next permutation).

    Augmentation: random crop after zero padding by 1/8 of the image side (4 for
    CIFAR-10, 1 for digits) in normalised space, and a horizontal flip with probability
    1/2, vectorised over the batch on the device.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device = splits.train_x.device
    n = splits.train_y.shape[0]
    gdev = generator.device
    perm = torch.randperm(n, generator=generator, device=gdev).to(device)
    crop = None
    if augment:
        pad = min(splits.train_x.shape[-2:]) // 8
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=gdev).to(device)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=gdev).to(device)
        flip = torch.randint(0, 2, (n,), generator=generator, device=gdev).bool().to(device)
        crop = (dy, dx, flip, pad)
    stop = n - 1 if batch_size > 1 and n % batch_size == 1 else n
    return _train_epoch(splits, perm, stop, batch_size, crop, channels_last)


def _train_epoch(splits, perm, stop, batch_size, crop, channels_last) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, stop)
        idx = perm[start:end]
        if crop is not None:
            dy, dx, flip, pad = crop
            raw, inside = _crop_flip(splits.train_x, idx, dy[start:end], dx[start:end], flip[start:end], pad)
            x = splits.normalize(raw, channels_last).mul_(inside)
        else:
            x = splits.normalize(splits.train_x[idx], channels_last)
        yield x, splits.train_y[idx]


def eval_batches(
    splits: Splits, split: str, batch_size: int, channels_last: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of ``split`` ("train", "val" or "test") in stored order, normalised, no augmentation."""
    if split not in SPLIT_NAMES:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLIT_NAMES)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    x_all, y_all = getattr(splits, f"{split}_x"), getattr(splits, f"{split}_y")
    return (
        (splits.normalize(x_all[i : i + batch_size], channels_last), y_all[i : i + batch_size])
        for i in range(0, y_all.shape[0], batch_size)
    )
