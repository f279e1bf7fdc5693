"""The study's choices as config knobs: the seed grids, the original code's choices, precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import REPO
from experiments.config import ConfigError, build, check
from experiments.data import _carve_tail
from experiments.probes import feature_quantiles
from experiments.train import build_model, make_optimizer, resolve_precision, train
from models import gate_parameters
from models.norms import BatchInstanceNorm2d
from orchestrator.grid.load import load_grid

GRIDS = REPO / "experiments" / "grids"


class _Splits:  # what build_model reads of the data
    num_classes, in_channels = 10, 3


SEED_GRIDS = sorted(p.stem for p in GRIDS.glob("seed_*.yaml"))


def test_the_seed_grids_are_the_four_documented():
    assert SEED_GRIDS == ["seed_batch", "seed_long_val", "seed_norms", "seed_original"]


@pytest.mark.parametrize("grid", SEED_GRIDS)
def test_seed_grids_validate_and_pin_float32_and_the_original_init(grid):
    """The study's recipe is plain SGD tuned with PyTorch's own layer init (Kaiming fan-out underfits it)."""
    spec = load_grid(GRIDS / f"{grid}.yaml", check_data=False)
    assert spec.runs and all(r.config.train.precision == "fp32" for r in spec.runs)
    assert all(r.config.model.init == "torch_default" for r in spec.runs)


def test_seed_batch_runs_the_reports_rows():
    """BN-128 is bn_torch (the norm table's BN (torch) row), BN-8 the hand-written bn."""
    spec = load_grid(GRIDS / "seed_batch.yaml", check_data=False)
    report_rows = {("bn_torch", 128), ("bn", 8), ("gn", 128), ("gn", 8)}
    assert {(r.config.model.norm, r.config.data.batch_size) for r in spec.runs} >= report_rows


def test_seed_long_val_is_the_100_epoch_recipe_without_early_stopping():
    (cfg, *_) = [r.config for r in load_grid(GRIDS / "seed_long_val.yaml", check_data=False).runs]
    assert (cfg.train.max_epochs, cfg.schedule.step_size, cfg.schedule.gamma) == (100, 20, 0.1)
    assert cfg.train.patience >= cfg.train.max_epochs


def test_seed_original_builds_the_original_structure():
    """Conv biases, an unpadded stem (30x30 maps from 32x32 input), one scalar gate per BIN layer."""
    spec = load_grid(GRIDS / "seed_original.yaml", check_data=False)
    cfg = next(r.config for r in spec.runs if r.config.model.norm == "bin")
    model = build_model(cfg, _Splits())
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.bias is not None for c in convs)
    assert model.stem(torch.randn(1, 3, 32, 32)).shape[-2:] == (30, 30)
    bins = [m for m in model.modules() if isinstance(m, BatchInstanceNorm2d)]
    assert bins and all(b.rho.shape == (1,) for b in bins)
    assert cfg.data.val_split == "tail" and cfg.train.probe_method == "order" and cfg.data.standardize == "pixel"
    assert cfg.model.init == "torch_default"


def test_gate_learning_rate_multiplier_reaches_the_optimizer():
    cfg = build({"model.norm": "bin", "optim.lr": 0.1, "optim.gate_lr_mult": 10.0, "optim.weight_decay": 5e-4})
    model = build_model(cfg, _Splits())
    opt = make_optimizer(cfg, model)
    gates = {id(p) for p in gate_parameters(model)}
    (gate_group,) = [g for g in opt.param_groups if {id(p) for p in g["params"]} == gates]
    assert gate_group["lr"] == pytest.approx(1.0) and gate_group["weight_decay"] == 0.0


@pytest.mark.parametrize("key, value", [("model.init", "xavier"), ("model.bin_gate", "pixel"),
                                        ("train.precision", "fp16"), ("train.probe_method", "mean"),
                                        ("data.val_split", "first"), ("model.stem_padding", 2),
                                        ("optim.gate_lr_mult", 0.0), ("data.standardize", "image")])
def test_bad_knob_values_name_the_key_and_the_choices(key, value):
    with pytest.raises(ConfigError) as err:
        check(build({key: value}))
    assert err.value.key == key


def test_precision_on_the_cpu_is_float32_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision(build({"train.precision": "auto"}), cpu) == "fp32"
    assert resolve_precision(build({"train.precision": "fp32"}), cpu) == "fp32"
    for precision in ("bf16", "tf32"):
        with pytest.raises(ConfigError, match="needs a CUDA GPU") as err:
            resolve_precision(build({"train.precision": precision}), cpu)
        assert err.value.key == "train.precision"
    assert resolve_precision(build({"train.precision": "auto"}), cuda) == "bf16"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 autocast vs fp32 is a CUDA path; no GPU here")
def test_precision_reaches_autocast_on_cuda():
    base = {"train.max_epochs": 1, "model.depth_n": 1, "data.batch_size": 64}
    bf16 = train(build({**base, "train.precision": "bf16"}), device="cuda")
    fp32 = train(build({**base, "train.precision": "fp32"}), device="cuda")
    assert bf16.history != fp32.history  # the same seed and data: only the arithmetic differs


def test_tail_carve_takes_the_last_of_each_class_in_stored_order():
    y = np.repeat(np.arange(4), 50)  # stored class by class, like an image-folder tree
    kept, carved = _carve_tail(y, 40, 0, "data.val_size", "validation", list("abcd"))
    assert len(carved) == 40 and len(kept) == 160
    for c in range(4):
        assert list(carved[y[carved] == c]) == list(np.flatnonzero(y == c)[-10:])


def test_probe_order_statistics_are_the_original_indices():
    features = torch.arange(64.0).flip(0)  # sorted: 0..63
    q = feature_quantiles(features, "order")
    assert list(q.values()) == [0.0, 12.0, 50.0, 63.0]
    interpolated = feature_quantiles(features)
    assert interpolated["feat_q20"] == pytest.approx(torch.quantile(torch.arange(64.0), 0.2).item())
