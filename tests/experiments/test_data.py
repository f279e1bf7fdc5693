"""experiments.data: datasets by name, fixed splits, device-resident batches."""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import SHARED
import experiments.data as data_mod
import experiments.imagefolder as imagefolder_mod
from experiments.config import DATASET_NAMES, DataConfig
from experiments.data import (
    DATASETS,
    DatasetError,
    Splits,
    eval_batches,
    load_splits,
    train_batches,
)

CIFAR_JPEG = SHARED / "data/cifar10-jpeg.tar.xz"
DIGITS_N = 1797


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch) -> Path:
    """Every test decodes into its own cache, never the user's ~/.cache/orch."""
    path = tmp_path / "orch-cache"
    monkeypatch.setenv("ORCH_CACHE_DIR", str(path))
    return path


@pytest.fixture(scope="module")
def digits() -> Splits:
    return load_splits(DataConfig())


def make_splits(n: int, size: int = 8, channels: int = 1) -> Splits:
    """Synthetic training split whose label is the example's index (to track coverage)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)
    y = torch.arange(n)
    mean = torch.full((channels,), 0.5)
    std = torch.full((channels,), 0.25)
    return Splits(x, y, x[:2], y[:2], x[:2], y[:2], mean, std, [str(i) for i in range(n)])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def write_image(path: Path, size: tuple[int, int] = (12, 12), mode: str = "RGB", value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    w, h = size
    shape = (h, w) if mode == "L" else (h, w, 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)  # (h, w) → L, (h, w, 3) → RGB


def make_tree(
    root: Path, classes=("cat", "ant", "bee"), n_train=6, n_test=2, ext="png", mode="RGB", size=(12, 12)
) -> Path:
    for ci, name in enumerate(classes):
        for i in range(n_train):
            write_image(root / "train" / name / f"{i}.{ext}", size, mode, value=100 * ci + i)
        for i in range(n_test):
            write_image(root / "test" / name / f"{i}.{ext}", size, mode, value=10_000 + 100 * ci + i)
    return root


def folder_cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(name="imagefolder", root=str(root), **{"val_size": 3, "test_size": 3, **kw})


# ------------------------------------------------------------------------ registry


def test_registry_matches_config_names():
    assert tuple(DATASETS) == DATASET_NAMES


def test_unknown_dataset_lists_names():
    with pytest.raises(DatasetError, match="digits, cifar10, imagefolder"):
        load_splits(DataConfig(name="mnist"))


# -------------------------------------------------------------------------- digits


def test_digits_shapes_dtypes_classes(digits):
    assert digits.train_x.dtype == torch.uint8 and digits.train_y.dtype == torch.int64
    assert digits.train_x.shape[1:] == (1, 8, 8)
    assert digits.val_x.shape[1:] == digits.test_x.shape[1:] == (1, 8, 8)
    assert (digits.num_classes, digits.in_channels, digits.train_x.shape[-1]) == (10, 1, 8)
    assert digits.class_names == [str(i) for i in range(10)]
    assert digits.mean.dtype == digits.std.dtype == torch.float32 and digits.mean.shape == (1,)
    assert int(digits.train_x.max()) == 255  # 16 → 255
    assert set(digits.train_y.tolist()) == set(range(10))


def test_digits_splits_partition_the_data(digits):
    # test: ceil(0.2 * 1797) = 360; val: ceil(0.2 * 1437) = 288
    assert (len(digits.train_y), len(digits.val_y), len(digits.test_y)) == (1149, 288, 360)

    def rows(x, y):
        return Counter(bytes(img.numpy().tobytes()) + bytes([int(label)]) for img, label in zip(x, y))

    from sklearn.datasets import load_digits

    raw = load_digits()
    full_x = torch.from_numpy(np.rint(raw.images * 255 / 16).astype(np.uint8))[:, None]
    together = Counter()
    for k in ("train", "val", "test"):
        together += rows(getattr(digits, f"{k}_x"), getattr(digits, f"{k}_y"))
    assert together == rows(full_x, torch.from_numpy(raw.target))  # same multiset: disjoint and covering


def test_carve_is_deterministic_and_ignores_global_rng():
    torch.manual_seed(1)
    np.random.seed(1)
    a = load_splits(DataConfig())
    torch.manual_seed(2)
    np.random.seed(2)
    b = load_splits(DataConfig())
    for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    c = load_splits(DataConfig(split_seed=1))
    assert not torch.equal(a.val_x, c.val_x)


def test_val_is_stratified(digits):
    counts = torch.bincount(digits.val_y, minlength=10)
    assert int(counts.max() - counts.min()) <= 2
    test_counts = torch.bincount(digits.test_y, minlength=10)
    assert int(test_counts.max() - test_counts.min()) <= 2


def test_val_size_count_and_fraction():
    by_count = load_splits(DataConfig(val_size=100, test_size=50))
    assert (len(by_count.val_y), len(by_count.test_y), len(by_count.train_y)) == (100, 50, DIGITS_N - 150)
    by_fraction = load_splits(DataConfig(val_size=0.1))
    assert len(by_fraction.val_y) == 144  # ceil(0.1 * 1437)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"val_size": 5}, r"data\.val_size=5 gives 5 validation examples for 10 classes"),
        ({"test_size": 0.001}, r"data\.test_size.*at least one per class"),
        ({"val_size": 1430}, r"data\.val_size=1430 takes 1430 of 1437.*at most 1427"),
        ({"val_size": 0}, r"data\.val_size must be greater than 0"),
    ],
)
def test_bad_carve_sizes(kw, match):
    with pytest.raises(DatasetError, match=match):
        load_splits(DataConfig(**kw))


def test_mean_std_from_train_only(digits):
    f = digits.train_x.float() / 255
    torch.testing.assert_close(digits.mean, f.mean(dim=(0, 2, 3)), rtol=0, atol=1e-6)
    torch.testing.assert_close(digits.std, f.std(dim=(0, 2, 3), correction=0), rtol=0, atol=1e-6)
    everything = torch.cat([digits.train_x, digits.val_x, digits.test_x]).float() / 255
    assert abs(float(everything.mean()) - float(digits.mean)) > 1e-6  # not the stats of all the data


def test_normalize_zero_mean_unit_std(digits):
    x = digits.normalize(digits.train_x)
    assert x.dtype == torch.float32 and x.shape == digits.train_x.shape
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std(correction=0)) - 1) < 1e-5
    cl = digits.normalize(digits.train_x, channels_last=True)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, x)
    one = digits.normalize(digits.train_x[0])  # a single (C, H, W) image
    torch.testing.assert_close(one, x[0])


def test_pixel_standardization_matches_numpy(tmp_path):
    """data.standardize=pixel: every split is standardised with the training split's mean
    image and population-std image (a pixel constant over the training split divides by 1)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 8, 10, 10, 3), dtype=np.uint8)  # class, example, H, W, RGB
    images[:, :, 0, 0, :] = 7  # the same in every image: std 0
    for c, name in enumerate("abc"):
        for i in range(8):
            path = tmp_path / ("train" if i < 6 else "test") / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[c, i]).save(path)
    s = load_splits(DataConfig(name="imagefolder", root=str(tmp_path), val_size=3, standardize="pixel"))
    train = s.train_x.numpy() / 255.0  # (N, C, H, W)
    mean, std = train.mean(axis=0), train.std(axis=0)
    assert s.mean.shape == s.std.shape == (3, 10, 10) and len(train) == 15
    np.testing.assert_allclose(s.mean.numpy(), mean, rtol=0, atol=1e-6)
    np.testing.assert_allclose(s.std.numpy(), std, rtol=0, atol=1e-6)
    assert torch.all(s.std[:, 0, 0] == 0)
    safe = np.where(std > 1e-12, std, 1.0)
    for split in ("train", "val", "test"):
        x = getattr(s, f"{split}_x")
        np.testing.assert_allclose(s.normalize(x).numpy(), (x.numpy() / 255.0 - mean) / safe, rtol=0, atol=1e-5)
    channel = load_splits(DataConfig(name="imagefolder", root=str(tmp_path), val_size=3))
    assert channel.mean.shape == (3,) and torch.equal(channel.train_x, s.train_x)


def test_splits_to_device_keeps_everything(digits):
    moved = digits.to("cpu")
    assert torch.equal(moved.val_x, digits.val_x) and moved.class_names == digits.class_names


# ------------------------------------------------------------------------- batches


def test_train_batches_cover_each_example_once():
    s = make_splits(1000)
    batches = list(train_batches(s, 128, gen(0)))
    assert [len(y) for _, y in batches] == [128] * 7 + [104]  # last partial batch kept
    ys = torch.cat([y for _, y in batches])
    assert torch.equal(ys.sort().values, torch.arange(1000))
    assert not torch.equal(ys, torch.arange(1000))  # shuffled
    x, y = batches[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    torch.testing.assert_close(x, s.normalize(s.train_x[y]))


def test_train_batches_drop_trailing_single():
    assert [len(y) for _, y in train_batches(make_splits(257), 128, gen(0))] == [128, 128]
    assert [len(y) for _, y in train_batches(make_splits(258), 128, gen(0))] == [128, 128, 2]
    assert [len(y) for _, y in train_batches(make_splits(3), 1, gen(0))] == [1, 1, 1]  # asked for batch 1


def test_train_batches_repeat_with_seed():
    s = make_splits(300)
    a = [y for _, y in train_batches(s, 64, gen(7), augment=True)]
    b = [y for _, y in train_batches(s, 64, gen(7), augment=True)]
    c = [y for _, y in train_batches(s, 64, gen(8), augment=True)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not torch.equal(torch.cat(a), torch.cat(c))
    xa = torch.cat([x for x, _ in train_batches(s, 64, gen(7), augment=True)])
    xb = torch.cat([x for x, _ in train_batches(s, 64, gen(7), augment=True)])
    assert torch.equal(xa, xb)
    g = gen(7)  # one generator over two epochs: the second epoch is a new order
    first, second = (torch.cat([y for _, y in train_batches(s, 64, g)]) for _ in range(2))
    assert not torch.equal(first, second)


def candidates(img: torch.Tensor, pad: int) -> list[torch.Tensor]:
    """Every pad-and-crop (zero padding) with and without a flip of one normalised image."""
    h, w = img.shape[-2:]
    padded = F.pad(img, (pad, pad, pad, pad))
    crops = [padded[:, dy : dy + h, dx : dx + w] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
    return crops + [c.flip(-1) for c in crops]


def test_augment_is_a_crop_and_flip_of_each_image(digits):
    plain = list(train_batches(digits, 256, gen(3)))
    aug = list(train_batches(digits, 256, gen(3), augment=True, channels_last=True))
    assert [x.shape for x, _ in aug] == [x.shape for x, _ in plain]
    assert all(x.is_contiguous(memory_format=torch.channels_last) for x, _ in aug)
    changed = flipped = 0
    for (px, py), (ax, ay) in zip(plain, aug):
        assert torch.equal(py, ay)  # augmentation does not change the order
        for p, a in zip(px, ax):
            options = candidates(p, pad=1)
            hits = [i for i, c in enumerate(options) if torch.allclose(a, c, atol=1e-6)]
            assert hits, "augmented image is no crop/flip of its source"
            changed += not torch.equal(a, p)
            flipped += min(hits) >= 9
    n = len(digits.train_y)
    assert changed > n // 2 and 0.35 * n < flipped < 0.65 * n


def test_crop_flip_exact():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).reshape(2, 1, 4, 4)
    idx = torch.tensor([1, 0])
    # no shift, flipped / shifted down-right by one, not flipped
    dy = dx = torch.tensor([1, 2])
    out, inside = data_mod._crop_flip(x, idx, dy, dx, torch.tensor([True, False]), pad=1)
    assert torch.equal(out[0], x[1].flip(-1)) and bool(inside[0].all())
    assert torch.equal(out[1, :, :3, :3], x[0, :, 1:, 1:])
    assert not bool(inside[1, 0, 3].any()) and not bool(inside[1, 0, :, 3].any())
    assert bool(inside[1, 0, :3, :3].all())


def test_augment_pads_with_zeros_in_normalized_space():
    s = make_splits(64, size=16)  # pad 2
    xs = torch.cat([x for x, _ in train_batches(s, 64, gen(0), augment=True)])
    border = torch.cat([xs[:, :, :2].flatten(), xs[:, :, -2:].flatten(), xs[..., :2].flatten(), xs[..., -2:].flatten()])
    assert bool((border == 0).any())  # some padding reached the edges as exact zeros


def test_eval_batches_in_order(digits):
    for split in ("train", "val", "test"):
        batches = list(eval_batches(digits, split, 100, channels_last=True))
        x = torch.cat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
        assert torch.equal(y, getattr(digits, f"{split}_y"))
        torch.testing.assert_close(x, digits.normalize(getattr(digits, f"{split}_x")))
        assert all(b[0].is_contiguous(memory_format=torch.channels_last) for b in batches)
    assert [len(y) for _, y in eval_batches(digits, "val", 100)] == [100, 100, 88]
    with pytest.raises(ValueError, match="train, val, test"):
        eval_batches(digits, "dev", 10)  # raises at the call, not at the first batch
    with pytest.raises(ValueError, match="batch_size"):
        train_batches(digits, 0, gen(0))


# --------------------------------------------------------------------- imagefolder


def test_imagefolder_loads_and_caches(tmp_path, cache_dir, monkeypatch):
    root = make_tree(tmp_path / "tree")
    s = load_splits(folder_cfg(root))
    assert s.class_names == ["ant", "bee", "cat"]  # sorted folder names
    assert (len(s.train_y), len(s.val_y), len(s.test_y)) == (15, 3, 6)
    assert s.train_x.shape[1:] == (3, 12, 12) and s.train_x.dtype == torch.uint8
    assert torch.bincount(s.val_y).tolist() == [1, 1, 1]
    # pixels round-trip: the first test image is ant/0.png
    expected = np.array(Image.open(root / "test/ant/0.png"))
    assert torch.equal(s.test_x[0], torch.from_numpy(expected).permute(2, 0, 1))
    assert s.test_y.tolist() == [0, 0, 1, 1, 2, 2]
    assert len(list(cache_dir.glob("imagefolder-*.pt"))) == 1
    assert not list(cache_dir.glob("*.tmp"))

    def no_decoding(path):
        raise AssertionError(f"decoded {path} despite the cache")

    monkeypatch.setattr(imagefolder_mod, "_decode_image", no_decoding)
    again = load_splits(folder_cfg(root))
    for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(again, name), getattr(s, name)), name

    # the cache key follows the content: a new file means a new decode
    write_image(root / "train/bee/new.png", value=999)
    with pytest.raises(AssertionError, match="despite the cache"):
        load_splits(folder_cfg(root))


def test_imagefolder_cache_is_keyed_by_content_not_location(tmp_path, cache_dir, monkeypatch):
    root = make_tree(tmp_path / "a")
    first = load_splits(folder_cfg(root))
    copy = tmp_path / "b"
    shutil.copytree(root, copy, copy_function=shutil.copy2)  # copy2 keeps mtimes
    monkeypatch.setattr(imagefolder_mod, "_decode_image", lambda p: pytest.fail(f"decoded {p}"))
    assert torch.equal(load_splits(folder_cfg(copy)).train_x, first.train_x)


def test_imagefolder_unwritable_cache_still_loads(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("ORCH_CACHE_DIR", str(blocker / "cache"))
    s = load_splits(folder_cfg(make_tree(tmp_path / "tree")))
    assert len(s.train_y) == 15


def test_imagefolder_corrupt_cache_is_rebuilt(tmp_path, cache_dir):
    root = make_tree(tmp_path / "tree")
    first = load_splits(folder_cfg(root))
    (cache_file,) = cache_dir.glob("imagefolder-*.pt")
    cache_file.write_bytes(b"garbage")
    assert torch.equal(load_splits(folder_cfg(root)).train_x, first.train_x)
    assert cache_file.stat().st_size > 100


def test_imagefolder_without_test_carves_one(tmp_path):
    root = make_tree(tmp_path / "tree", n_train=8, n_test=0, ext="jpg")
    assert not (root / "test").exists()
    s = load_splits(folder_cfg(root, test_size=0.25, val_size=6))
    assert (len(s.train_y), len(s.val_y), len(s.test_y)) == (12, 6, 6)  # 24 images, test ceil(0.25 * 24)
    assert torch.bincount(s.test_y).tolist() == [2, 2, 2]


def test_imagefolder_greyscale_keeps_one_channel(tmp_path):
    s = load_splits(folder_cfg(make_tree(tmp_path / "grey", mode="L")))
    assert s.in_channels == 1 and s.mean.shape == (1,)


def test_imagefolder_mixed_grey_and_colour_is_rgb(tmp_path):
    root = make_tree(tmp_path / "mixed")
    grey = root / "train/ant/0.png"
    write_image(grey, mode="L", value=5)
    s = load_splits(folder_cfg(root))
    assert s.in_channels == 3
    pixels = torch.from_numpy(np.array(Image.open(grey)))
    hits = [x for x in torch.cat([s.train_x, s.val_x]) if torch.equal(x, pixels.expand(3, -1, -1))]
    assert len(hits) == 1  # grey replicated to three channels


def test_imagefolder_palette_and_bmp(tmp_path):
    root = make_tree(tmp_path / "tree")
    rgb = np.zeros((12, 12, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[3:, :, 1] = 90
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(root / "train/bee/0.png")
    Image.fromarray(rgb).save(root / "train/cat/0.bmp")  # torchvision cannot decode BMP: PIL does
    s = load_splits(folder_cfg(root))
    everything = torch.cat([s.train_x, s.val_x])
    target = torch.from_numpy(rgb).permute(2, 0, 1)
    assert sum(torch.equal(x, target) for x in everything) == 2


def test_imagefolder_size_mismatch_names_the_file(tmp_path):
    root = make_tree(tmp_path / "tree")
    write_image(root / "train/bee/odd.png", size=(10, 7))
    with pytest.raises(DatasetError, match=r"bee/odd\.png is 10x7 but .*ant/0\.png is 12x12"):
        load_splits(folder_cfg(root))


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DatasetError, match="has no train/ folder"):
        load_splits(folder_cfg(tmp_path))
    with pytest.raises(DatasetError, match="needs data.root"):
        load_splits(DataConfig(name="imagefolder"))

    root = make_tree(tmp_path / "tree")
    (root / "test/ant").rename(root / "test/wasp")
    with pytest.raises(DatasetError, match=r"missing \['ant'\], extra \['wasp'\]"):
        load_splits(folder_cfg(root))

    empty = make_tree(tmp_path / "empty")
    (empty / "train/zebra").mkdir()
    (empty / "train/zebra/notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="zebra holds no images"):
        load_splits(folder_cfg(empty))

    broken = make_tree(tmp_path / "broken")
    (broken / "train/ant/bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=r"cannot decode .*bad\.jpg"):
        load_splits(folder_cfg(broken))


def test_imagefolder_too_few_per_class(tmp_path):
    root = make_tree(tmp_path / "tree", n_train=1)
    with pytest.raises(DatasetError, match="only 1 example.*at least 2 per class"):
        load_splits(folder_cfg(root))


# ------------------------------------------------------------------------- cifar10


def test_cifar10_missing_says_how_to_fix(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_splits(DataConfig(name="cifar10", root=str(tmp_path)))
    message = str(err.value)
    assert str(tmp_path) in message and "data.download=true" in message and "data.name=imagefolder" in message


SUBSET = "0[01]??.jpg"  # the first 200 images of each class in each split: 4,000 of the tree's 60,000 files


@pytest.mark.integration  # tar extracts the shipped tree
def test_cifar10_jpeg_tree(tmp_path, capsys, monkeypatch):
    """The shipped CIFAR-10 JPEG tree as an imagefolder, on 200 images per class and split
    (small, so that a busy disk cannot make it slow: all 60,000 files took 2-5 s to write on a
    quiet 2-core VM and 30-60 s on a busy one; the subset takes 2 s, most of it decompressing)."""
    if not CIFAR_JPEG.is_file():
        pytest.skip(f"{CIFAR_JPEG} is absent (it lives in ../shared/data beside the repository)")
    tree = tmp_path / "extracted"
    tree.mkdir()
    try:
        start = time.perf_counter()
        if shutil.which("tar"):
            subprocess.run(["tar", "-xJf", str(CIFAR_JPEG), "-C", str(tree), "--wildcards", f"cifar10/*/*/{SUBSET}"],
                           check=True)
        else:
            with tarfile.open(CIFAR_JPEG) as tar:
                tar.extractall(tree, members=[m for m in tar if fnmatch.fnmatch(m.name, f"cifar10/*/*/{SUBSET}")],
                               filter="data")
        extract = time.perf_counter() - start
        cfg = DataConfig(name="imagefolder", root=str(tree / "cifar10"), val_size=500)

        start = time.perf_counter()
        s = load_splits(cfg)
        first = time.perf_counter() - start
        monkeypatch.setattr(imagefolder_mod, "_decode_image", lambda p: pytest.fail(f"decoded {p} despite the cache"))
        start = time.perf_counter()
        again = load_splits(cfg)
        cached = time.perf_counter() - start
    finally:
        shutil.rmtree(tree, ignore_errors=True)  # do not leave the files in pytest's kept tmp dirs

    assert len(s.train_y) + len(s.val_y) == 2_000 and len(s.test_y) == 2_000
    assert len(s.val_y) == 500 and torch.bincount(s.val_y).tolist() == [50] * 10
    assert s.num_classes == 10 and s.class_names[0] == "airplane" and s.train_x.shape[1:] == (3, 32, 32)
    torch.testing.assert_close(s.mean, torch.tensor([0.4914, 0.4822, 0.4465]), atol=0.01, rtol=0)  # CIFAR-10's own
    assert torch.equal(again.test_x, s.test_x)
    with capsys.disabled():
        print(f"\ncifar10-jpeg: extract {extract:.1f} s, decode+split {first:.1f} s, cached load {cached:.2f} s")
