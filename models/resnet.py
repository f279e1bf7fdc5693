"""CIFAR-style ResNet (He et al., 2016) with a pluggable normalization layer."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .norms import make_norm

__all__ = ["BasicBlock", "ResNet"]


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv3×3 → norm → ReLU → conv3×3 → norm, plus shortcut, then ReLU.

    The shortcut is a 1×1 conv + norm projection when ``stride != 1`` or the
    width changes, the identity otherwise.

    Args:
        in_channels: input width.
        out_channels: output width.
        stride: stride of the first conv (and of the projection).
        norm: norm name for :func:`models.norms.make_norm`.
        **norm_kwargs: passed to every :func:`make_norm` call.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str, **norm_kwargs: Any) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.norm1 = make_norm(norm, out_channels, **norm_kwargs)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.norm2 = make_norm(norm, out_channels, **norm_kwargs)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                make_norm(norm, out_channels, **norm_kwargs),
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
        **norm_kwargs: options for every norm layer (e.g. ``groups=16``,
            ``rho_init=0.5``); options a norm does not take are ignored.

    Raises:
        ValueError: for bad ``n``/``widths``, an unknown norm, or a norm that
            cannot be built for a width (e.g. GroupNorm groups not dividing it).
    """

    def __init__(
        self,
        n: int = 2,
        num_classes: int = 10,
        norm: str = "bn",
        in_channels: int = 3,
        widths: Sequence[int] = (16, 32, 64),
        **norm_kwargs: Any,
    ) -> None:
        super().__init__()
        widths = tuple(widths)
        if len(widths) != 3:
            raise ValueError(f"ResNet: widths must have exactly 3 entries (one per stage), got {widths}")
        if n < 1:
            raise ValueError(f"ResNet: n (blocks per stage) must be >= 1, got {n}")
        self.n = n
        self.norm = norm
        self.widths = widths
        self.stem = nn.Sequential(
            _conv3x3(in_channels, widths[0]),
            make_norm(norm, widths[0], **norm_kwargs),
            nn.ReLU(inplace=True),
        )
        stages = []
        in_width = widths[0]
        for stage, width in enumerate(widths):
            blocks = []
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(BasicBlock(in_width, width, stride, norm, **norm_kwargs))
                in_width = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: Tensor) -> Tensor:
        """Pooled features, (N, in_channels, H, W) -> (N, widths[-1])."""
        # x: (N, C, H, W)
        x = self.stages(self.stem(x))
        return x.mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        """Logits, (N, in_channels, H, W) -> (N, num_classes)."""
        return self.head(self.features(x))
