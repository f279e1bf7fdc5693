"""Models for orch studies: normalization layers and a CIFAR-style ResNet.

``NORM_NAMES`` and ``norm_constraint_error`` come from the torch-free
``models._checks``; the torch-backed names (``make_norm``, ``ResNet``,
``clamp_gates_``, ``gate_parameters``) are imported lazily on first access, so
``from models._checks import ...`` (which runs this file) never imports torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._checks import NORM_NAMES, norm_constraint_error

if TYPE_CHECKING:
    from .norms import clamp_gates_, gate_parameters, make_norm
    from .resnet import ResNet

__all__ = ["NORM_NAMES", "ResNet", "clamp_gates_", "gate_parameters", "make_norm", "norm_constraint_error"]

_LAZY = {
    "make_norm": ".norms",
    "clamp_gates_": ".norms",
    "gate_parameters": ".norms",
    "ResNet": ".resnet",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
