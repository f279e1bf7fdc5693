"""ResNet structure, norm placement, dtypes/layouts and torch.compile."""
from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from models import NORM_NAMES, ResNet, make_norm
from models.norms import BatchInstanceNorm2d, BatchNorm2d, GroupNorm2d, InstanceNorm2d, LayerNorm2d, NoNorm

# Every norm class that could end up in a model, hand-written or PyTorch's.
ALL_NORM_TYPES = (
    BatchNorm2d,
    InstanceNorm2d,
    BatchInstanceNorm2d,
    LayerNorm2d,
    GroupNorm2d,
    NoNorm,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.InstanceNorm2d,
    nn.GroupNorm,
    nn.LayerNorm,
)


def _norm_modules(model):
    return [m for m in model.modules() if isinstance(m, ALL_NORM_TYPES)]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_shapes(n):
    model = ResNet(n=n, num_classes=7)
    x = torch.randn(2, 3, 32, 32)
    assert model.features(x).shape == (2, 64)
    assert model(x).shape == (2, 7)
    assert ResNet(n=1, widths=(8, 16, 24))(x).shape == (2, 10)
    assert ResNet(n=1, widths=(8, 16, 24)).features(x).shape == (2, 24)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_depth_is_6n_plus_2(n):
    model = ResNet(n=n)
    convs3 = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    convs1 = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs3) + len(linears) == 6 * n + 2
    assert len(linears) == 1
    assert len(convs1) == 2  # projections: first block of stages 2 and 3 only
    assert all(c.stride == (2, 2) for c in convs1)
    assert all(c.bias is None for c in convs3 + convs1)


def test_parameter_count_n2_bn():
    # ResNet(n=2, num_classes=10, norm="bn"), widths (16, 32, 64); a norm has 2*C params.
    # stem:    conv 3*16*9 = 432,                               bn 32      ->    464
    # stage 1: 2 blocks x (2 convs 16*16*9 = 2304, 2 bn 32)                  ->  9_344
    # stage 2: block 1: conv 16*32*9 = 4608 + conv 32*32*9 = 9216 + 2 bn 128
    #                   + projection 1x1 16*32 = 512 + bn 64           = 14_528
    #          block 2: 2 * 9216 + 2 bn 128                            = 18_560 -> 33_088
    # stage 3: block 1: conv 32*64*9 = 18432 + conv 64*64*9 = 36864 + 2 bn 256
    #                   + projection 1x1 32*64 = 2048 + bn 128         = 57_728
    #          block 2: 2 * 36864 + 2 bn 256                           = 73_984 -> 131_712
    # head:    64*10 + 10                                                     ->    650
    # total:   464 + 9_344 + 33_088 + 131_712 + 650                           = 175_258
    model = ResNet(n=2, num_classes=10, norm="bn")
    assert sum(p.numel() for p in model.parameters()) == 175_258
    # bn_torch has the same parameters.
    assert sum(p.numel() for p in ResNet(n=2, norm="bn_torch").parameters()) == 175_258


@pytest.mark.parametrize("norm", NORM_NAMES)
def test_every_norm_slot_holds_the_chosen_norm(norm):
    n = 2
    model = ResNet(n=n, norm=norm)
    expected = type(make_norm(norm, 16))
    found = _norm_modules(model)
    assert len(found) == 6 * n + 3  # stem + 2 per block + 2 projections
    assert {type(m) for m in found} == {expected}
    # Projection shortcuts carry the norm too.
    for stage in (model.stages[1], model.stages[2]):
        assert type(stage[0].shortcut[1]) is expected
    x = torch.randn(2, 3, 16, 16)
    assert model(x).shape == (2, 10)


def test_norm_options_reach_every_slot():
    model = ResNet(n=1, norm="gn", norm_options={"groups": 8})
    assert {m.groups for m in model.modules() if isinstance(m, GroupNorm2d)} == {8}
    model = ResNet(n=1, norm="bin", norm_options={"rho_init": 0.3, "gate": "layer"})
    bins = [m for m in model.modules() if isinstance(m, BatchInstanceNorm2d)]
    assert len(bins) == 9 and all(m.rho.shape == (1,) and torch.all(m.rho == 0.3) for m in bins)


def test_an_option_of_another_norm_is_refused():
    with pytest.raises(ValueError, match="norm 'bn' takes no option 'groups'"):
        ResNet(n=1, norm="bn", norm_options={"groups": 8})


def test_original_code_choices_change_the_structure():
    """conv biases, PyTorch's default init and an unpadded stem (30x30 maps on 32x32 input)."""
    torch.manual_seed(0)
    ours = ResNet(n=1, init="kaiming_fan_out")
    torch.manual_seed(0)
    orig = ResNet(n=1, conv_bias=True, init="torch_default", stem_padding=0)
    convs = [m for m in orig.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.bias is not None for m in convs)
    assert all(m.bias is None for m in ours.modules() if isinstance(m, torch.nn.Conv2d))
    x = torch.randn(2, 3, 32, 32)
    assert orig.stem(x).shape[-2:] == (30, 30) and ours.stem(x).shape[-2:] == (32, 32)
    assert orig(x).shape == (2, 10)
    # Kaiming fan-out: Var(w) = 2 / (k*k*C_out); PyTorch's default: kaiming_uniform(a=sqrt 5), Var = 1 / (3 fan_in).
    w_ours, w_orig = ours.stages[0][0].conv1.weight, orig.stages[0][0].conv1.weight
    assert w_ours.var().item() == pytest.approx(2 / (9 * 16), rel=0.15)
    assert w_orig.var().item() == pytest.approx(1 / (3 * 9 * 16), rel=0.15)
    with pytest.raises(ValueError, match="unknown init"):
        ResNet(init="xavier")


def test_default_init_is_pytorchs_own():
    """The study's recipe (plain SGD) is tuned to PyTorch's layer init, so it is the default."""
    torch.manual_seed(0)
    default = ResNet(n=1)
    torch.manual_seed(0)
    torch_default = ResNet(n=1, init="torch_default")
    for a, b in zip(default.parameters(), torch_default.parameters()):
        assert torch.equal(a, b)


def test_digits_in_channels_1_8x8():
    model = ResNet(n=1, in_channels=1, norm="bn")
    x = torch.randn(4, 1, 8, 8)
    out = model(x)
    assert out.shape == (4, 10)
    out.sum().backward()


@pytest.mark.parametrize("widths", [(16, 24, 64), (8, 32, 64)])
def test_gn_bad_widths_fail_at_construction(widths):
    with pytest.raises(ValueError, match=r"channels cannot be split into 16 groups"):
        ResNet(n=1, norm="gn", widths=widths)
    ResNet(n=1, norm="gn", widths=widths, norm_options={"groups": 8})  # fine with 8 groups


@pytest.mark.parametrize("kwargs", [dict(widths=(16, 32)), dict(widths=(16, 32, 64, 128)), dict(n=0)])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        ResNet(**kwargs)


def test_unknown_norm():
    with pytest.raises(ValueError, match="valid names"):
        ResNet(norm="batch")


@pytest.mark.parametrize("norm", ["bn", "bin", "gn", "bn_torch"])
def test_bf16_autocast(norm):
    model = ResNet(n=1, norm=norm)
    x = torch.randn(4, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all()
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("norm", ["bn", "in", "bin", "ln", "gn", "nn"])
def test_channels_last(norm):
    model = ResNet(n=1, norm=norm)
    x = torch.randn(4, 3, 16, 16)
    model.eval()  # no running-stat updates between the two calls
    want = model(x)
    model_cl = model.to(memory_format=torch.channels_last)
    got = model_cl(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_train_step_decreases_loss():
    torch.manual_seed(0)
    model = ResNet(n=1, norm="bin", widths=(8, 16, 16), in_channels=1, num_classes=3)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(10):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def _compile_available() -> bool:
    return hasattr(torch, "compile") and any(shutil.which(cc) for cc in ("cc", "gcc", "clang", "g++"))


@pytest.mark.integration  # inductor compiles in worker processes
@pytest.mark.slow
@pytest.mark.skipif(not _compile_available(), reason="torch.compile (inductor) needs a C/C++ compiler")
def test_torch_compile_forward():
    import copy

    torch.manual_seed(0)
    model = ResNet(n=1, norm="bin", widths=(8, 8, 16), in_channels=1, num_classes=3)
    twin = copy.deepcopy(model)
    x = torch.randn(4, 1, 8, 8)
    want = model(x)  # training mode: batch statistics and running-stat updates
    got = torch.compile(twin)(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    for a, b in zip(model.buffers(), twin.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
