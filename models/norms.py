"""Hand-written 2-D normalization layers and their registry (pure ``torch.nn``).

Every layer takes ``num_channels`` first and ``eps`` / ``affine`` as keywords,
works on (N, C, H, W) inputs in float32, float64 or bfloat16, contiguous or
channels_last. Statistics are computed in at least float32 (bf16/fp16 inputs
are upcast and the output is cast back to the input dtype), like PyTorch.

The affine transform is folded with the normalization into one scale and one
shift per channel (per sample and channel where statistics are per sample), so
the output is a single fused ``x * scale + shift`` (``torch.addcmul``).
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from ._checks import (
    BIN_GATES,
    DEFAULT_GROUPS,
    NORM_NAMES,
    group_split_message,
    norm_constraint_error,
    unknown_norm_message,
)

__all__ = [
    "NORM_NAMES",
    "BatchNorm2d",
    "InstanceNorm2d",
    "BatchInstanceNorm2d",
    "LayerNorm2d",
    "GroupNorm2d",
    "NoNorm",
    "make_norm",
    "clamp_gates_",
    "gate_parameters",
    "norm_constraint_error",
]


def _stat_dtype(x: Tensor) -> torch.dtype:
    """Dtype the statistics are computed in: at least float32."""
    return torch.promote_types(x.dtype, torch.float32)


def _channel(t: Tensor) -> Tensor:
    """Reshape a (C,) tensor to (1, C, 1, 1) for broadcasting against (N, C, H, W)."""
    return t.view(1, -1, 1, 1)


def _check_4d(name: str, x: Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name}: expected a 4-D (N, C, H, W) input, got shape {tuple(x.shape)}")


class _AffineNorm(nn.Module):
    """Shared per-channel affine parameters (``weight`` = γ, ``bias`` = β)."""

    def __init__(self, num_channels: int, *, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        if num_channels < 1:
            raise ValueError(f"{type(self).__name__}: num_channels must be positive, got {num_channels}")
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(num_channels))
            self.bias = nn.Parameter(torch.zeros(num_channels))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def _fold_affine(self, scale: Tensor, shift: Tensor) -> tuple[Tensor, Tensor]:
        """Fold the affine transform into the normalization x * scale + shift.

        Returns (γ·scale, γ·shift + β). ``scale`` and ``shift`` broadcast against
        (N, C, H, W) (shape (1, C, 1, 1) or (N, C, 1, 1)); γ and β are cast to
        their dtype.
        """
        if self.weight is not None:
            weight = _channel(self.weight.to(scale.dtype))
            scale, shift = weight * scale, weight * shift
        if self.bias is not None:
            shift = shift + _channel(self.bias.to(shift.dtype))
        return scale, shift

    def _check_channels(self, x: Tensor) -> None:
        _check_4d(type(self).__name__, x)
        if x.size(1) != self.num_channels:
            raise ValueError(
                f"{type(self).__name__}: expected {self.num_channels} channels, got input size {tuple(x.shape)}"
            )

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, affine={self.affine}"


class _RunningStats(_AffineNorm):
    """Adds BatchNorm running statistics with PyTorch's buffer names and update rule."""

    def __init__(
        self, num_channels: int, *, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True
    ) -> None:
        super().__init__(num_channels, eps=eps, affine=affine)
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(num_channels))
        self.register_buffer("running_var", torch.ones(num_channels))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def reset_running_stats(self) -> None:
        """Reset running mean/var to 0/1 and the batch counter to 0."""
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.num_batches_tracked.zero_()

    def _batch_count(self, x: Tensor) -> int:
        """Values per channel (N*H*W); raises like PyTorch when training with one."""
        count = x.numel() // x.size(1)
        if count <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.size()}")
        return count

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, count: int) -> None:
        """running = (1 - momentum) * running + momentum * batch, unbiased variance."""
        m = self.momentum
        self.running_mean.mul_(1.0 - m).add_(mean.detach(), alpha=m)
        self.running_var.mul_(1.0 - m).add_(var.detach() * (count / (count - 1)), alpha=m)
        self.num_batches_tracked.add_(1)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", momentum={self.momentum}"


class BatchNorm2d(_RunningStats):
    """Batch normalization over (N, H, W) per channel, with running statistics.

    Training uses the biased batch variance for normalization and updates
    ``running_var`` with the unbiased one, exactly like ``torch.nn.BatchNorm2d``;
    eval mode normalizes with the running statistics. Same buffer and
    parameter names as PyTorch, so state dicts are interchangeable.

    Args:
        num_channels: C.
        eps: added to the variance.
        momentum: running-statistics momentum (weight of the new batch).
        affine: learn per-channel ``weight`` (γ) and ``bias`` (β).
    """

    def forward(self, x: Tensor) -> Tensor:
        # x: (N, C, H, W)
        self._check_channels(x)
        xs = x.to(_stat_dtype(x))
        if self.training:
            count = self._batch_count(x)
            var, mean = torch.var_mean(xs, dim=(0, 2, 3), correction=0)  # (C,)
            self._update_running_stats(mean, var, count)
        else:
            mean, var = self.running_mean.to(xs.dtype), self.running_var.to(xs.dtype)
        rstd = _channel(torch.rsqrt(var + self.eps))
        scale, shift = self._fold_affine(rstd, -_channel(mean) * rstd)
        return torch.addcmul(shift, xs, scale).to(x.dtype)


class InstanceNorm2d(_AffineNorm):
    """Instance normalization: statistics over (H, W) of each sample and channel.

    Same computation in training and eval mode (no running statistics), like
    ``torch.nn.InstanceNorm2d(C, affine=True)``.

    Args:
        num_channels: C.
        eps: added to the variance.
        affine: learn per-channel ``weight`` (γ) and ``bias`` (β).
    """

    def forward(self, x: Tensor) -> Tensor:
        # x: (N, C, H, W)
        self._check_channels(x)
        xs = x.to(_stat_dtype(x))
        var, mean = torch.var_mean(xs, dim=(2, 3), correction=0, keepdim=True)  # (N, C, 1, 1)
        rstd = torch.rsqrt(var + self.eps)
        scale, shift = self._fold_affine(rstd, -mean * rstd)
        return torch.addcmul(shift, xs, scale).to(x.dtype)


class BatchInstanceNorm2d(_RunningStats):
    """Batch-Instance Normalization (Nam & Kim, 2018).

    y = γ · (ρ · x̂_BN + (1 − ρ) · x̂_IN) + β, with one gate ρ per channel
    (parameter ``rho``). The BN part uses batch statistics in training and
    running statistics in eval mode (same rules as :class:`BatchNorm2d`); the
    IN part always uses per-sample statistics. ρ is meant to stay in [0, 1]:
    call :func:`clamp_gates_` after each optimizer step and exclude
    :func:`gate_parameters` from weight decay.

    Args:
        num_channels: C.
        eps: added to both variances.
        momentum: running-statistics momentum of the BN part.
        affine: learn per-channel ``weight`` (γ) and ``bias`` (β).
        rho_init: initial value of every gate, in [0, 1].
        gate: ``"channel"``, one gate per channel (C values), or ``"layer"``, one
            scalar gate for the whole layer.
    """

    GATES = BIN_GATES

    def __init__(
        self,
        num_channels: int,
        *,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        rho_init: float = 0.5,
        gate: str = "channel",
    ) -> None:
        super().__init__(num_channels, eps=eps, momentum=momentum, affine=affine)
        if not 0.0 <= rho_init <= 1.0:
            raise ValueError(f"BatchInstanceNorm2d: rho_init must be in [0, 1], got {rho_init!r}")
        if gate not in self.GATES:
            raise ValueError(f"BatchInstanceNorm2d: gate must be one of {', '.join(self.GATES)}, got {gate!r}")
        self.gate = gate
        self.rho = nn.Parameter(torch.full((num_channels if gate == "channel" else 1,), float(rho_init)))

    def forward(self, x: Tensor) -> Tensor:
        # x: (N, C, H, W)
        self._check_channels(x)
        xs = x.to(_stat_dtype(x))
        # Instance statistics, (N, C, 1, 1).
        var_in, mean_in = torch.var_mean(xs, dim=(2, 3), correction=0, keepdim=True)
        if self.training:
            count = self._batch_count(x)
            # Batch statistics from the instance ones (every instance has H*W
            # values): law of total variance, no second pass over x.
            var_between, mean_bn = torch.var_mean(mean_in, dim=0, correction=0, keepdim=True)
            var_bn = var_in.mean(dim=0, keepdim=True) + var_between  # (1, C, 1, 1)
            self._update_running_stats(mean_bn.flatten(), var_bn.flatten(), count)
        else:
            mean_bn = _channel(self.running_mean.to(xs.dtype))
            var_bn = _channel(self.running_var.to(xs.dtype))
        rho = _channel(self.rho.to(xs.dtype))  # (1, C, 1, 1), or (1, 1, 1, 1) with one gate per layer
        rstd_bn = torch.rsqrt(var_bn + self.eps)
        rstd_in = torch.rsqrt(var_in + self.eps)
        # ρ·(x − μ_BN)·r_BN + (1 − ρ)·(x − μ_IN)·r_IN = x·scale + shift, per (N, C):
        scale = rho * rstd_bn + (1.0 - rho) * rstd_in
        shift = -(rho * mean_bn * rstd_bn + (1.0 - rho) * mean_in * rstd_in)
        scale, shift = self._fold_affine(scale, shift)
        return torch.addcmul(shift, xs, scale).to(x.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", gate={self.gate}"


class GroupNorm2d(_AffineNorm):
    """Group normalization: statistics over (C/G, H, W) of each sample and group.

    Args:
        num_channels: C; must be divisible by ``groups``.
        groups: number of groups G (default 16).
        eps: added to the variance.
        affine: learn per-channel ``weight`` (γ) and ``bias`` (β).

    Raises:
        ValueError: at construction, if ``groups`` does not divide ``num_channels``.
    """

    def __init__(
        self, num_channels: int, *, groups: int = DEFAULT_GROUPS, eps: float = 1e-5, affine: bool = True
    ) -> None:
        if groups < 1 or num_channels % groups:
            raise ValueError(group_split_message(num_channels, groups))
        super().__init__(num_channels, eps=eps, affine=affine)
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        # x: (N, C, H, W)
        self._check_channels(x)
        n, c, h, w = x.shape
        xs = x.to(_stat_dtype(x))
        # Splitting C is a view (no copy) for contiguous and channels_last layouts.
        xg = xs.reshape(n, self.groups, c // self.groups, h, w)
        var, mean = torch.var_mean(xg, dim=(2, 3, 4), correction=0, keepdim=True)  # (N, G, 1, 1, 1)
        rstd = torch.rsqrt(var + self.eps)
        # Broadcast the group statistics to their channels: (N, C, 1, 1).
        per_channel = (n, self.groups, c // self.groups, 1, 1)
        scale = rstd.expand(per_channel).reshape(n, c, 1, 1)
        shift = (-mean * rstd).expand(per_channel).reshape(n, c, 1, 1)
        scale, shift = self._fold_affine(scale, shift)
        return torch.addcmul(shift, xs, scale).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, groups={self.groups}, eps={self.eps}, affine={self.affine}"


class LayerNorm2d(GroupNorm2d):
    """Layer normalization over (C, H, W) of each sample, per-channel affine.

    The same function as GroupNorm with one group (``nn.GroupNorm(1, C)``).

    Args:
        num_channels: C.
        eps: added to the variance.
        affine: learn per-channel ``weight`` (γ) and ``bias`` (β).
    """

    def __init__(self, num_channels: int, *, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(num_channels, groups=1, eps=eps, affine=affine)

    def extra_repr(self) -> str:
        return _AffineNorm.extra_repr(self)


class NoNorm(nn.Identity):
    """Identity: no normalization. Takes ``num_channels`` like every norm, and ignores it.

    Args:
        num_channels: ignored.
    """

    def __init__(self, num_channels: int | None = None) -> None:
        super().__init__()


_REGISTRY: dict[str, type[nn.Module]] = {
    "bn_torch": nn.BatchNorm2d,
    "bn": BatchNorm2d,
    "in": InstanceNorm2d,
    "bin": BatchInstanceNorm2d,
    "ln": LayerNorm2d,
    "gn": GroupNorm2d,
    "nn": NoNorm,
}
assert tuple(_REGISTRY) == NORM_NAMES


def _keywords(cls: type[nn.Module]) -> tuple[str, ...]:
    """The keyword options ``cls(num_channels, ...)`` takes (PyTorch's own layers included)."""
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]  # after self, num_channels
    skip = {"device", "dtype"}  # placement, not a norm option
    return tuple(p.name for p in params if p.kind in (inspect.Parameter.KEYWORD_ONLY,
                                                      inspect.Parameter.POSITIONAL_OR_KEYWORD)
                 and p.name not in skip)


def make_norm(name: str, num_channels: int, **options: Any) -> nn.Module:
    """Build the normalization layer ``name`` for ``num_channels`` channels.

    Args:
        name: one of :data:`NORM_NAMES`.
        num_channels: C.
        **options: options of that layer (``eps``, ``affine``, ``momentum``, ``groups``,
            ``rho_init``, ``gate``, ...). An option the layer does not take is refused.

    Raises:
        ValueError: an unknown name or option (the message lists the valid ones), or
            options the layer rejects (e.g. groups that do not divide ``num_channels``).
    """
    try:
        cls = _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(unknown_norm_message(name)) from None
    valid = _keywords(cls)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"norm {name!r} takes no option {', '.join(map(repr, unknown))}; "
                         f"its options are: {', '.join(valid) or 'none'}")
    return cls(num_channels, **options)


def gate_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The ρ gates of every :class:`BatchInstanceNorm2d` in ``model``.

    Args:
        model: any module tree.

    Returns:
        The gate Parameters, e.g. to exclude them from weight decay.
    """
    return [m.rho for m in model.modules() if isinstance(m, BatchInstanceNorm2d)]


@torch.no_grad()
def clamp_gates_(model: nn.Module) -> nn.Module:
    """Clamp every :class:`BatchInstanceNorm2d` gate of ``model`` into [0, 1], in place.

    Call after each optimizer step.

    Args:
        model: any module tree.

    Returns:
        ``model``.
    """
    for rho in gate_parameters(model):
        rho.clamp_(0.0, 1.0)
    return model
