"""Hand-written norm layers against their PyTorch counterparts, plus the registry."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import REPO
from models import NORM_NAMES, ResNet, clamp_gates_, gate_parameters, make_norm, norm_constraint_error
from models.norms import (
    BatchInstanceNorm2d,
    BatchNorm2d,
    GroupNorm2d,
    InstanceNorm2d,
    LayerNorm2d,
    NoNorm,
)

# float32: relative error <= 1e-5; float64: <= 1e-10. The small atol covers
# outputs/gradients that are near zero where the relative error is meaningless.
TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float64: dict(rtol=1e-10, atol=1e-10),
}
DTYPES = [torch.float32, torch.float64]

# (N, C, H, W); C divisible by 16 so GroupNorm(16, C) applies to every shape.
SHAPES = [(1, 16, 5, 7), (2, 32, 4, 4), (8, 16, 3, 3), (64, 16, 4, 4)]
# BatchNorm-like layers need more than one value per channel; N=1 1x1 excluded.
BN_SHAPES = SHAPES + [(64, 16, 1, 1)]


def _randn(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Offset and scale so the statistics are far from the (0, 1) defaults.
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 1.7 + 0.3).to(dtype)


def _randomize_affine(*modules, seed=1):
    """Give every module the same random (non-trivial) weight and bias."""
    g = torch.Generator().manual_seed(seed)
    c = modules[0].weight.numel()
    w = torch.rand(c, generator=g, dtype=torch.float64) + 0.5
    b = torch.randn(c, generator=g, dtype=torch.float64)
    with torch.no_grad():
        for m in modules:
            m.weight.copy_(w)
            m.bias.copy_(b)


def _pair(ours, ref, dtype):
    ours, ref = ours.to(dtype), ref.to(dtype)
    _randomize_affine(ours, ref)
    return ours, ref


def _fwd_bwd(module, x, grad):
    x = x.clone().requires_grad_(True)
    y = module(x)
    y.backward(grad)
    return y.detach(), x.grad, module.weight.grad, module.bias.grad


def _assert_same_fwd_bwd(ours, ref, x, dtype):
    grad = _randn(x.shape, dtype, seed=7)
    got = _fwd_bwd(ours, x, grad)
    want = _fwd_bwd(ref, x, grad)
    for name, a, b in zip(("output", "input grad", "weight grad", "bias grad"), got, want):
        torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m, name=name: f"{name}: {m}")


# --------------------------------------------------------------------------- BatchNorm


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_bn_matches_torch(shape, dtype):
    c = shape[1]
    ours, ref = _pair(BatchNorm2d(c), nn.BatchNorm2d(c), dtype)
    for step in range(3):  # several steps: running statistics accumulate
        x = _randn(shape, dtype, seed=step)
        _assert_same_fwd_bwd(ours, ref, x, dtype)
    torch.testing.assert_close(ours.running_mean, ref.running_mean, **TOL[dtype])
    torch.testing.assert_close(ours.running_var, ref.running_var, **TOL[dtype])
    assert ours.num_batches_tracked.item() == ref.num_batches_tracked.item() == 3
    ours.eval(), ref.eval()
    x = _randn(shape, dtype, seed=11)
    _assert_same_fwd_bwd(ours, ref, x, dtype)


def test_bn_state_dict_compatible_with_torch():
    ref = nn.BatchNorm2d(16)
    ref(_randn((4, 16, 3, 3), torch.float32))
    ours = BatchNorm2d(16)
    ours.load_state_dict(ref.state_dict())
    assert set(ours.state_dict()) == set(ref.state_dict())
    torch.testing.assert_close(ours.running_var, ref.running_var)


def test_bn_one_value_per_channel_raises():
    bn = BatchNorm2d(3)
    with pytest.raises(ValueError, match=r"Expected more than 1 value per channel when training, got input size"):
        bn(torch.randn(1, 3, 1, 1))
    with pytest.raises(ValueError, match=r"Expected more than 1 value per channel"):
        BatchInstanceNorm2d(3)(torch.randn(1, 3, 1, 1))
    bn.eval()
    assert bn(torch.randn(1, 3, 1, 1)).shape == (1, 3, 1, 1)  # fine with running stats


# ------------------------------------------------------------- InstanceNorm / Layer / Group


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(
    "ours_cls, make_ref",
    [
        (InstanceNorm2d, lambda c: nn.InstanceNorm2d(c, affine=True)),
        (LayerNorm2d, lambda c: nn.GroupNorm(1, c)),
        (GroupNorm2d, lambda c: nn.GroupNorm(16, c)),
    ],
    ids=["in", "ln", "gn"],
)
def test_per_sample_norms_match_torch(ours_cls, make_ref, train, shape, dtype):
    c = shape[1]
    ours, ref = _pair(ours_cls(c), make_ref(c), dtype)
    ours.train(train), ref.train(train)
    _assert_same_fwd_bwd(ours, ref, _randn(shape, dtype), dtype)


def test_gn_groups_keyword():
    x = _randn((4, 24, 3, 3), torch.float64)
    ours, ref = _pair(GroupNorm2d(24, groups=6), nn.GroupNorm(6, 24), torch.float64)
    _assert_same_fwd_bwd(ours, ref, x, torch.float64)


def test_gn_indivisible_raises_naming_both_numbers():
    with pytest.raises(ValueError, match=r"GroupNorm2d: 24 channels cannot be split into 16 groups"):
        GroupNorm2d(24)
    with pytest.raises(ValueError, match=r"24 channels .* 5 groups"):
        make_norm("gn", 24, groups=5)


# ------------------------------------------------------------------- BatchInstanceNorm


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 16, 5, 7), (64, 16, 4, 4)])
def test_bin_is_bn_at_rho_1_and_in_at_rho_0(shape, dtype):
    c = shape[1]
    bin1, bn = _pair(BatchInstanceNorm2d(c, rho_init=1.0), BatchNorm2d(c), dtype)
    bin0, inn = _pair(BatchInstanceNorm2d(c, rho_init=0.0), InstanceNorm2d(c), dtype)
    for step in range(3):
        x = _randn(shape, dtype, seed=step)
        _assert_same_fwd_bwd(bin1, bn, x, dtype)
        _assert_same_fwd_bwd(bin0, inn, x, dtype)
    # The BN part keeps the same running statistics whatever rho.
    for m in (bin1, bin0):
        torch.testing.assert_close(m.running_mean, bn.running_mean, **TOL[dtype])
        torch.testing.assert_close(m.running_var, bn.running_var, **TOL[dtype])
    for m in (bin1, bin0, bn, inn):
        m.eval()
    x = _randn(shape, dtype, seed=5)
    _assert_same_fwd_bwd(bin1, bn, x, dtype)
    _assert_same_fwd_bwd(bin0, inn, x, dtype)


def test_bin_mixes_bn_and_in():
    x = _randn((4, 16, 3, 3), torch.float64)
    rho = torch.rand(16, dtype=torch.float64)
    b = BatchInstanceNorm2d(16).double()
    bn, inn = BatchNorm2d(16).double(), InstanceNorm2d(16).double()
    _randomize_affine(b, bn, inn)
    with torch.no_grad():
        b.rho.copy_(rho)
    w, bias = b.weight.view(1, -1, 1, 1), b.bias.view(1, -1, 1, 1)
    x_bn, x_in = (bn(x) - bias) / w, (inn(x) - bias) / w
    r = rho.view(1, -1, 1, 1)
    torch.testing.assert_close(b(x), w * (r * x_bn + (1 - r) * x_in) + bias)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_bin_gradcheck(train):
    torch.manual_seed(0)
    m = BatchInstanceNorm2d(4).double().train(train)
    with torch.no_grad():
        m.rho.uniform_(0.1, 0.9)
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_()
        m.running_mean.normal_()
        m.running_var.uniform_(0.5, 2.0)
    x = _randn((3, 4, 3, 2), torch.float64).requires_grad_(True)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in m.named_parameters()}
    names = list(params)

    def f(x, *values):
        return torch.func.functional_call(m, dict(zip(names, values)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params.values()))


@pytest.mark.parametrize("cls", [BatchNorm2d, InstanceNorm2d, LayerNorm2d, lambda c: GroupNorm2d(c, groups=2)])
def test_gradcheck(cls):
    m = cls(4).double()
    _randomize_affine(m)
    x = _randn((3, 4, 3, 2), torch.float64).requires_grad_(True)
    w = m.weight.detach().clone().requires_grad_(True)
    b = m.bias.detach().clone().requires_grad_(True)

    def f(x, w, b):
        return torch.func.functional_call(m, {"weight": w, "bias": b}, (x,))

    assert torch.autograd.gradcheck(f, (x, w, b))


def test_bin_rho_init_validated():
    with pytest.raises(ValueError, match="rho_init"):
        BatchInstanceNorm2d(4, rho_init=1.5)
    assert torch.all(BatchInstanceNorm2d(4, rho_init=0.25).rho == 0.25)
    assert torch.all(BatchInstanceNorm2d(4).rho == 0.5)


def test_clamp_gates_after_sgd_step():
    m = BatchInstanceNorm2d(4)
    opt = torch.optim.SGD(gate_parameters(m), lr=10.0)
    with torch.no_grad():
        m.rho.copy_(torch.tensor([0.0, 0.2, 0.8, 1.0]))
    m.rho.grad = torch.tensor([1.0, 1.0, -1.0, -1.0])  # pushes two gates below 0, two above 1
    opt.step()
    assert m.rho.min() < 0 and m.rho.max() > 1
    assert clamp_gates_(m) is m
    assert torch.all((m.rho >= 0) & (m.rho <= 1))
    torch.testing.assert_close(m.rho.detach(), torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert not m.rho.requires_grad or m.rho.grad_fn is None


def test_gate_parameters_of_resnet():
    n = 2
    model = ResNet(n=n, norm="bin")
    gates = gate_parameters(model)
    bins = [m for m in model.modules() if isinstance(m, BatchInstanceNorm2d)]
    assert len(gates) == len(bins) == 6 * n + 3  # stem + 2 per block + 2 projections
    assert {id(g) for g in gates} == {id(m.rho) for m in bins}
    assert gate_parameters(ResNet(n=1, norm="bn")) == []
    # Gates are real parameters of the model (so an optimizer can split them off).
    assert {id(g) for g in gates} <= {id(p) for p in model.parameters()}


# --------------------------------------------------------------------------- NoNorm


def test_nonorm_is_identity():
    m = make_norm("nn", 8)
    assert type(m) is NoNorm
    x = torch.randn(2, 8, 3, 3)
    assert m(x) is x
    assert list(m.parameters()) == []


# ----------------------------------------------------------- layouts and dtypes

HAND_WRITTEN = ["bn", "in", "bin", "ln", "gn", "nn"]


@pytest.mark.parametrize("name", HAND_WRITTEN)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_channels_last_matches_contiguous(name, train):
    x = _randn((4, 32, 5, 6), torch.float32)
    m = make_norm(name, 32).train(train)
    if name != "nn":
        _randomize_affine(m)
    y_cl = m(x.to(memory_format=torch.channels_last))
    y = m(x)
    torch.testing.assert_close(y_cl, y, rtol=1e-5, atol=1e-5)
    assert y_cl.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", HAND_WRITTEN)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_bf16_runs_close_to_fp32(name, train):
    x = _randn((4, 32, 5, 6), torch.float32).to(torch.bfloat16)
    m = make_norm(name, 32).train(train)
    if name != "nn":
        _randomize_affine(m)
    y = m(x.requires_grad_(True))
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16
    if name != "nn":
        assert m.weight.grad.dtype == torch.float32
    want = m(x.detach().float())  # same (bf16-representable) values in float32
    torch.testing.assert_close(y.float(), want, rtol=1e-2, atol=1e-2)


def test_bf16_running_stats_stay_fp32():
    m = BatchNorm2d(16)
    m(_randn((4, 16, 3, 3), torch.float32).to(torch.bfloat16))
    assert m.running_mean.dtype == m.running_var.dtype == torch.float32


@pytest.mark.parametrize(
    "name, dims",
    [("bn", (0, 2, 3)), ("in", (2, 3)), ("bin", (0, 2, 3)), ("ln", (1, 2, 3)), ("gn", (2, 3, 4))],
)
def test_affine_false_normalizes(name, dims):
    m = make_norm(name, 32, affine=False).double()
    assert m.weight is None and m.bias is None
    y = m(_randn((4, 32, 3, 3), torch.float64))
    if name == "gn":
        y = y.view(4, 16, 2, 3, 3)
    # Zero mean over the statistics' dims (bin: both the BN and the IN term have zero batch mean).
    mean = y.mean(dim=dims)
    torch.testing.assert_close(mean, torch.zeros_like(mean), rtol=0, atol=1e-10)


# --------------------------------------------------------------------------- registry

EXPECTED_TYPES = {
    "bn_torch": nn.BatchNorm2d,
    "bn": BatchNorm2d,
    "in": InstanceNorm2d,
    "bin": BatchInstanceNorm2d,
    "ln": LayerNorm2d,
    "gn": GroupNorm2d,
    "nn": NoNorm,
}


def test_norm_names():
    assert NORM_NAMES == ("bn_torch", "bn", "in", "bin", "ln", "gn", "nn")


OPTIONS = {"bn_torch": {"eps": 1e-3}, "bn": {"eps": 1e-3}, "in": {"eps": 1e-3}, "ln": {"eps": 1e-3},
           "bin": {"eps": 1e-3, "rho_init": 0.25}, "gn": {"eps": 1e-3, "groups": 16}, "nn": {}}


@pytest.mark.parametrize("name", NORM_NAMES)
def test_make_norm_passes_the_layers_own_options(name):
    m = make_norm(name, 32, **OPTIONS[name])
    assert type(m) is EXPECTED_TYPES[name]
    if name != "nn":
        assert m.eps == 1e-3
    if name == "gn":
        assert m.groups == 16
    if name == "bin":
        assert torch.all(m.rho == 0.25)
    assert m(torch.randn(2, 32, 3, 3)).shape == (2, 32, 3, 3)


@pytest.mark.parametrize("name, option", [("bn", "groups"), ("gn", "group"), ("nn", "eps"), ("bn_torch", "rho_init"),
                                          ("ln", "groups"), ("in", "rho_init")])
def test_make_norm_refuses_an_option_the_layer_does_not_take(name, option):
    with pytest.raises(ValueError) as exc:
        make_norm(name, 32, **{option: 8})
    msg = str(exc.value)
    assert repr(option) in msg and f"norm {name!r}" in msg
    valid = [k for k in OPTIONS[name]] or ["none"]
    assert all(k in msg for k in valid), msg  # the message lists what the layer does take


def test_bin_gate_per_layer_is_one_scalar_and_matches_per_channel_gates_set_alike():
    x = torch.randn(4, 6, 5, 5, dtype=torch.float64)
    per_layer = BatchInstanceNorm2d(6, rho_init=0.3, gate="layer").double()
    per_channel = BatchInstanceNorm2d(6, rho_init=0.3).double()
    assert per_layer.rho.shape == (1,) and per_channel.rho.shape == (6,)
    torch.testing.assert_close(per_layer(x), per_channel(x))
    with pytest.raises(ValueError, match="gate must be one of channel, layer"):
        BatchInstanceNorm2d(6, gate="pixel")


def test_make_norm_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as exc:
        make_norm("batchnorm", 16)
    msg = str(exc.value)
    assert "batchnorm" in msg
    for name in NORM_NAMES:
        assert repr(name) in msg or name in msg


@pytest.mark.parametrize(
    "norm, widths, kw, expected",
    [
        ("gn", (16, 32, 64), {}, None),
        ("gn", (16, 24, 64), {}, "GroupNorm2d: 24 channels cannot be split into 16 groups"),
        ("gn", (16, 24, 64), {"groups": 8}, None),
        ("gn", (16, 24, 64), {"groups": 5}, "16 channels cannot be split into 5 groups"),
        ("gn", 8, {}, "8 channels cannot be split into 16 groups"),
        ("gn", (16,), {"groups": 0}, "groups must be a positive integer"),
        ("ln", (16, 24, 64), {"groups": 16}, None),
        ("bn", (3, 5, 7), {"groups": 16, "rho_init": 0.5}, None),
        ("bin", (16, 24), {"groups": 16}, None),
        ("bin", (16,), {"rho_init": 2.0}, "rho_init must be in [0, 1]"),
        ("nn", (24,), {}, None),
        ("bn_torch", (24,), {}, None),
        ("nope", (16,), {}, "unknown norm 'nope'"),
        ("bn", (16, 0), {}, "positive integer"),
    ],
)
def test_norm_constraint_error(norm, widths, kw, expected):
    err = norm_constraint_error(norm, widths, **kw)
    if expected is None:
        assert err is None
    else:
        assert err is not None and expected in err


def test_norm_constraint_error_agrees_with_construction():
    for norm in NORM_NAMES:
        for widths in [(16, 32, 64), (16, 24, 64), (8, 16, 32)]:
            for groups in (4, 8, 16):
                err = norm_constraint_error(norm, widths, groups=groups)
                options = {"groups": groups} if norm == "gn" else {}
                if err is None:
                    ResNet(n=1, norm=norm, widths=widths, norm_options=options)
                else:
                    with pytest.raises(ValueError) as exc:
                        ResNet(n=1, norm=norm, widths=widths, norm_options=options)
                    assert str(exc.value) == err


@pytest.mark.integration  # a fresh interpreter
def test_checks_module_does_not_import_torch():
    code = (
        "import sys\n"
        "from models._checks import NORM_NAMES, norm_constraint_error\n"
        "assert norm_constraint_error('gn', (16, 24)) is not None\n"
        "assert 'gn' in NORM_NAMES\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not bad, bad\n"
    )
    root = str(REPO)
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
