"""Cheap, torch-free checks on normalization choices.

This module must not import torch (directly or indirectly): the grid validator
imports it to reject impossible sweep configurations before any heavy import.
"""
from __future__ import annotations

from collections.abc import Iterable

NORM_NAMES: tuple[str, ...] = ("bn_torch", "bn", "in", "bin", "ln", "gn", "nn")
"""Valid names for :func:`models.norms.make_norm`."""

DEFAULT_GROUPS = 16
"""Default group count of ``gn`` (GroupNorm2d)."""

BIN_GATES: tuple[str, ...] = ("channel", "layer")
"""Batch-Instance gate granularity: one gate per channel, or one scalar per layer."""

INIT_NAMES: tuple[str, ...] = ("kaiming_fan_out", "torch_default")
"""Conv weight initialisations of :class:`models.ResNet`."""


def unknown_norm_message(name: object) -> str:
    """Error message for a norm name that is not in :data:`NORM_NAMES`."""
    return f"unknown norm {name!r}; valid names are: {', '.join(NORM_NAMES)}"


def group_split_message(num_channels: int, groups: int) -> str:
    """Error message for a GroupNorm2d whose groups do not divide the channels."""
    return (
        f"GroupNorm2d: {num_channels} channels cannot be split into {groups} groups; "
        "choose groups that divide the channel count"
    )


def norm_constraint_error(norm: str, widths: int | Iterable[int], **kw: object) -> str | None:
    """Check, without torch, whether ``norm`` can be built for every channel width.

    Args:
        norm: a name from :data:`NORM_NAMES`.
        widths: one channel count or an iterable of channel counts (e.g. the
            ResNet ``widths``); every width gets a norm layer.
        **kw: the norm keyword arguments the caller will pass to ``make_norm``
            (e.g. ``groups=16, rho_init=0.5``); keywords irrelevant to ``norm``
            are ignored, as ``make_norm`` does.

    Returns:
        A human-readable error message, or ``None`` when the norm can be built.
    """
    if norm not in NORM_NAMES:
        return unknown_norm_message(norm)
    widths = [widths] if isinstance(widths, int) else list(widths)
    for w in widths:
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            return f"{norm}: channel width must be a positive integer, got {w!r}"
    if norm == "gn":
        groups = kw.get("groups", DEFAULT_GROUPS)
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            return f"GroupNorm2d: groups must be a positive integer, got {groups!r}"
        for w in widths:
            if w % groups:
                return group_split_message(w, groups)
    if norm == "bin":
        rho_init = kw.get("rho_init", 0.5)
        if isinstance(rho_init, bool) or not isinstance(rho_init, (int, float)) or not 0.0 <= rho_init <= 1.0:
            return f"BatchInstanceNorm2d: rho_init must be in [0, 1], got {rho_init!r}"
    return None
