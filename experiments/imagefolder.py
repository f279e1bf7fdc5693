"""The imagefolder dataset: any tree ``root/train/<class>/<image>`` (and optionally
``root/test/<class>/<image>``), scanned, decoded once and cached as one tensor file.

The cache is keyed by the tree's content (relative paths, sizes, mtimes, labels), not its
location, and lives under ``$ORCH_CACHE_DIR`` (default ``~/.cache/orch``), so the tree may
be read-only and later runs skip decoding. torchvision decodes what it can, PIL the rest;
both are imported inside the functions that decode.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from experiments.config import DataConfig
from experiments.datasets import DatasetError, RawDataset, dataset_root

log = logging.getLogger(__name__)

# Same list as torchvision.datasets.folder.IMG_EXTENSIONS, compared case-insensitively.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CACHE_ENV = "ORCH_CACHE_DIR"  # where decoded imagefolder trees are cached (default ~/.cache/orch)
CACHE_FORMAT = 1  # bump when the cached layout or the decoding rules change


class _Entry(NamedTuple):
    rel: str  # path relative to the dataset root, "/"-separated
    size: int
    mtime_ns: int
    label: int


def _scan_split(root: Path, split: str) -> tuple[list[str], list[_Entry]]:
    """Class folders (sorted, as torchvision's ImageFolder) and their image files.

    Hidden folders and files (".…") are skipped; files are found recursively, links followed.
    Plain os.path strings: pathlib made scanning 60,000 files 5x slower.
    """
    split_dir = root / split
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DatasetError(f"{split_dir} has no class folders; expected {split_dir}/<class>/<image> files")
    base = str(root)
    entries: list[_Entry] = []
    for label, name in enumerate(classes):
        found = 0
        for dirpath, dirnames, filenames in os.walk(os.path.join(base, split, name), followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel_dir = os.path.relpath(dirpath, base).replace(os.sep, "/")
            for fname in sorted(filenames):
                if fname.startswith(".") or not fname.lower().endswith(IMG_EXTENSIONS):
                    continue
                st = os.stat(os.path.join(dirpath, fname))
                entries.append(_Entry(f"{rel_dir}/{fname}", st.st_size, st.st_mtime_ns, label))
                found += 1
        if not found:
            raise DatasetError(
                f"class folder {split_dir / name} holds no images ({', '.join(IMG_EXTENSIONS)}); "
                "add images or remove the folder"
            )
    return classes, entries


def _cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "orch").expanduser()


def _content_key(train: list[_Entry], test: list[_Entry] | None) -> str:
    """Hash over relative paths, sizes, mtimes and labels: independent of where the tree lies."""
    h = hashlib.sha256(f"orch-imagefolder-v{CACHE_FORMAT}\n".encode())
    for split, entries in (("train", train), ("test", test or [])):
        for e in entries:
            h.update(f"{split}\0{e.rel}\0{e.size}\0{e.mtime_ns}\0{e.label}\n".encode())
    return h.hexdigest()


def _is_palette_png(data: bytes) -> bool:
    # PNG signature, then IHDR; byte 25 is the colour type, 3 = palette. torchvision's
    # UNCHANGED mode returns palette indices for these, so they are decoded as RGB instead.
    return len(data) > 25 and data[:8] == b"\x89PNG\r\n\x1a\n" and data[25] == 3


def _decode_image(path: str) -> torch.Tensor:
    """One file → uint8 (C, H, W) with C = 1 (grey) or 3 (RGB); alpha is dropped.

    torchvision decodes JPEG/PNG/GIF/WEBP; other formats (BMP, TIFF, PPM/PGM), and every
    format once torchvision drops its decoders (deprecated in 0.29 for TorchCodec), go
    through PIL. Callers silence torchvision's per-call DeprecationWarning.
    """
    try:
        from torchvision.io import ImageReadMode, decode_image
    except ImportError:  # a torchvision without image decoding
        img = _decode_with_pil(path)
    else:
        with open(path, "rb") as f:
            data = f.read()
        try:
            mode = ImageReadMode.RGB if _is_palette_png(data) else ImageReadMode.UNCHANGED
            img = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode)
        except (RuntimeError, ValueError):  # a format torchvision lacks, or a broken file
            img = _decode_with_pil(path)
    if img.dim() == 4:  # animated GIF: first frame
        img = img[0]
    if img.dtype != torch.uint8:  # 16-bit PNG
        img = (img.to(torch.int32) >> 8).to(torch.uint8)
    channels = img.shape[0]
    if channels == 2:  # grey + alpha
        img = img[:1]
    elif channels == 4:  # RGBA
        img = img[:3]
    elif channels not in (1, 3):
        raise DatasetError(f"{path} has {channels} channels; convert it to RGB or greyscale")
    return img


def _decode_with_pil(path: str) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as im:
            grey = im.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
            arr = np.array(im.convert("L" if grey else "RGB"))  # a writable copy for torch
    except Exception as err:  # PIL raises many types for a broken file
        raise DatasetError(f"cannot decode {path} ({err}); remove or re-encode the file") from None
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()


def _decode_all(
    root: Path, entries: list[_Entry], ref: tuple[str, int, int] | None
) -> tuple[torch.Tensor, bool, tuple[str, int, int]]:
    """Decode every file into one preallocated uint8 (N, 3, H, W) tensor.

    Grey images are broadcast to 3 channels here; the caller keeps one channel if no image
    was colour. ``ref`` (path, H, W) is the size every image must match; the first file sets it.

    Serial on purpose. Measured on a 2-core VM, 2026-11, the 60,000 CIFAR-10 JPEGs (32×32):
    torchvision's decoder alone took 1.3–1.9 s serially, 3.0–3.1 s in a 2–4 thread pool,
    3.3 s with PIL serially and 5.8–7.4 s with PIL in threads; images this small are
    cheaper to decode than to hand to a thread. Reading plus decoding here: 3.4–4 s.
    """
    out: torch.Tensor | None = None
    colour = False
    for i, entry in enumerate(entries):
        path = os.path.join(root, entry.rel)
        img = _decode_image(path)
        h, w = img.shape[-2:]
        if ref is None:
            ref = (entry.rel, h, w)
        if (h, w) != ref[1:]:
            raise DatasetError(
                f"{path} is {w}x{h} but {root / ref[0]} is {ref[2]}x{ref[1]} (width x height); "
                "every image must have the same size: resize the tree first"
            )
        if out is None:
            out = torch.empty((len(entries), 3, h, w), dtype=torch.uint8)
        colour |= img.shape[0] == 3
        out[i] = img  # (1, H, W) broadcasts to (3, H, W)
    assert out is not None and ref is not None  # callers pass at least one entry
    return out, colour, ref


def _read_cache(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        cached = torch.load(path, weights_only=True, mmap=True)
        if cached.get("format") == CACHE_FORMAT:
            return cached
    except Exception as err:  # a truncated or foreign file: decode again and overwrite it
        log.warning("ignoring unreadable cache %s (%s)", path, err)
    return None


def _write_cache(path: Path, payload: dict) -> None:
    """Atomic: a temp file in the same folder, then os.replace, so concurrent runs never
    read a half-written file (the last writer wins, with identical content)."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; the cache holds nothing private
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
        tmp = None
    except OSError as err:  # an unwritable cache only costs the next run a decode
        log.warning("could not write the decode cache %s (%s); set %s to a writable folder", path, err, CACHE_ENV)
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def read_imagefolder(cfg: DataConfig) -> RawDataset:
    """Any tree ``root/train/<class>/<image>`` with optional ``root/test/<class>/<image>``.

    Class indices are the sorted folder names (as torchvision's ImageFolder); test/ must
    have exactly the classes of train/. Images are decoded once and cached as one tensor
    file keyed by the tree's content (see :func:`_content_key`) under ``$ORCH_CACHE_DIR``
    (default ``~/.cache/orch``), so the root may be read-only and later runs skip decoding.
    """
    root = dataset_root(cfg)
    if not (root / "train").is_dir():
        raise DatasetError(
            f"{root} has no train/ folder; point data.root at a tree with train/<class>/<image> "
            "(and optionally test/<class>/<image>), e.g. the cifar10/ folder of cifar10-jpeg.tar.xz"
        )
    classes, train_entries = _scan_split(root, "train")
    test_entries = None
    if (root / "test").is_dir():
        test_classes, test_entries = _scan_split(root, "test")
        if test_classes != classes:
            missing = sorted(set(classes) - set(test_classes))
            extra = sorted(set(test_classes) - set(classes))
            raise DatasetError(
                f"{root / 'test'} must have the class folders of {root / 'train'}: "
                f"missing {missing or 'none'}, extra {extra or 'none'}; make the two sets equal"
            )

    cache_path = _cache_dir() / f"imagefolder-{_content_key(train_entries, test_entries)[:32]}.pt"
    cached = _read_cache(cache_path)
    if cached is not None:
        log.info("imagefolder %s: decoded images from cache %s", root, cache_path)
        names = list(cached["class_names"])
        return RawDataset(cached["train_x"], cached["train_y"], cached["test_x"], cached["test_y"], names)

    start = time.perf_counter()
    with warnings.catch_warnings():  # torchvision 0.29 warns on every decode call
        warnings.simplefilter("ignore", DeprecationWarning)
        train_x, colour, ref = _decode_all(root, train_entries, None)
        test_x = None
        if test_entries is not None:
            test_x, test_colour, _ = _decode_all(root, test_entries, ref)
            colour |= test_colour
    if not colour:  # every image is greyscale: keep one channel
        train_x = train_x[:, :1].contiguous()
        test_x = test_x[:, :1].contiguous() if test_x is not None else None
    n = len(train_entries) + len(test_entries or [])
    log.info("imagefolder %s: decoded %d images in %.1f s", root, n, time.perf_counter() - start)

    def labels(entries: list[_Entry] | None) -> torch.Tensor | None:
        return None if entries is None else torch.tensor([e.label for e in entries], dtype=torch.int64)

    raw = RawDataset(train_x, labels(train_entries), test_x, labels(test_entries), classes)
    payload = {"format": CACHE_FORMAT, "root": str(root), **raw._asdict()}
    _write_cache(cache_path, payload)
    return raw
