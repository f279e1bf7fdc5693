"""CIFAR-style ResNet (He et al., 2016) with a pluggable normalization layer."""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._checks import INIT_NAMES as INITS
from .norms import make_norm

__all__ = ["BasicBlock", "ResNet"]




def _conv3x3(in_channels: int, out_channels: int, stride: int = 1, *, bias: bool = False,
             padding: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=padding, bias=bias)


class BasicBlock(nn.Module):
    """conv3×3 → norm → ReLU → conv3×3 → norm, plus shortcut, then ReLU.

    The shortcut is a 1×1 conv + norm projection when ``stride != 1`` or the
    width changes, the identity otherwise.

    Args:
        in_channels: input width.
        out_channels: output width.
        stride: stride of the first conv (and of the projection).
        norm_layer: builds the norm for a channel count (every norm slot gets one).
        conv_bias: give every conv a bias.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm_layer: Callable[[int], nn.Module],
                 *, conv_bias: bool = False) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride, bias=conv_bias)
        self.norm1 = norm_layer(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels, bias=conv_bias)
        self.norm2 = norm_layer(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=conv_bias),
                norm_layer(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        # x: (N, C_in, H, W) -> (N, C_out, H / stride, W / stride)
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet-(6n+2): stem, three stages of ``n`` basic blocks, pool, linear head.

    Stem: 3×3 conv (``widths[0]`` channels) → norm → ReLU. Stage s has ``n``
    blocks of width ``widths[s]``; the first block of stages 2 and 3 has stride
    2 and a 1×1 conv + norm projection shortcut, every other shortcut is the
    identity. The chosen norm fills every norm slot (6n + 3 of them).

    Args:
        n: blocks per stage (>= 1); depth 6n + 2.
        num_classes: outputs of the linear head.
        norm: one of :data:`models.NORM_NAMES`.
        in_channels: input image channels (1 for digits, 3 for CIFAR).
        widths: channel widths of the three stages.
        norm_options: options of that norm for :func:`models.norms.make_norm` (e.g.
            ``{"groups": 8}`` for ``gn``); an option the norm does not take is refused.
        conv_bias: give every conv a bias (default: none, the norm's shift replaces it).
        init: ``"torch_default"`` (PyTorch's own layer init; the default, which the
            study's plain-SGD recipe was tuned with) or ``"kaiming_fan_out"`` (He et
            al.'s normal init of the conv weights, fan-out mode, ReLU gain).
        stem_padding: padding of the stem conv: 1 keeps the input size, 0 shrinks a
            32×32 input to 30×30 maps.

    Raises:
        ValueError: for bad ``n``/``widths``/``init``, an unknown norm or option, or a
            norm that cannot be built for a width (e.g. GroupNorm groups not dividing it).
    """

    def __init__(
        self,
        n: int = 2,
        num_classes: int = 10,
        norm: str = "bn",
        in_channels: int = 3,
        widths: Sequence[int] = (16, 32, 64),
        *,
        norm_options: Mapping[str, Any] | None = None,
        conv_bias: bool = False,
        init: str = "torch_default",
        stem_padding: int = 1,
    ) -> None:
        super().__init__()
        widths = tuple(widths)
        if len(widths) != 3:
            raise ValueError(f"ResNet: widths must have exactly 3 entries (one per stage), got {widths}")
        if n < 1:
            raise ValueError(f"ResNet: n (blocks per stage) must be >= 1, got {n}")
        if init not in INITS:
            raise ValueError(f"ResNet: unknown init {init!r}; choose one of {', '.join(INITS)}")
        self.n = n
        self.norm = norm
        self.widths = widths
        norm_layer = functools.partial(make_norm, norm, **dict(norm_options or {}))
        self.stem = nn.Sequential(
            _conv3x3(in_channels, widths[0], bias=conv_bias, padding=stem_padding),
            norm_layer(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages = []
        in_width = widths[0]
        for stage, width in enumerate(widths):
            blocks = []
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(BasicBlock(in_width, width, stride, norm_layer, conv_bias=conv_bias))
                in_width = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(widths[-1], num_classes)
        if init == "kaiming_fan_out":
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    def features(self, x: Tensor) -> Tensor:
        """Pooled features, (N, in_channels, H, W) -> (N, widths[-1])."""
        # x: (N, C, H, W)
        x = self.stages(self.stem(x))
        return x.mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        """Logits, (N, in_channels, H, W) -> (N, num_classes)."""
        return self.head(self.features(x))
