"""Feature probe: how the penultimate features of one fixed example spread as training goes.

Every epoch the pooled feature vector of the first validation example is sorted and four
of its percentiles recorded (the seed study's quantile plot), by one of two methods:

* ``interpolated`` (default): the 1st, 20th, 80th and 99th percentiles, linearly
  interpolated between order statistics (``torch.quantile``);
* ``order``: the original code's order statistics, no interpolation: the smallest, the
  ⌊0.2·(D−1)⌋-th, the ⌊0.8·(D−1)⌋-th and the largest of the D sorted features (indices
  0, 12, 50 and 63 for D = 64). They are logged under the same names.
"""

from __future__ import annotations

import math

import torch

from experiments.metric_names import QUANTILES

ORDER_LEVELS = (0.0, 0.2, 0.8, 1.0)  # the order method's levels, one per name in QUANTILES


@torch.no_grad()
def feature_quantiles(features: torch.Tensor, method: str = "interpolated") -> dict[str, float]:
    """Four percentiles of one feature vector. features: (D,) or (1, D)."""
    values = features.detach().float().flatten().sort().values
    if method == "order":
        d = values.numel()
        picked = values[[math.floor(level * (d - 1)) for level in ORDER_LEVELS]]
    elif method == "interpolated":
        picked = torch.quantile(values, torch.tensor(list(QUANTILES.values()), device=values.device))
    else:
        raise ValueError(f"unknown probe method {method!r}; choose interpolated or order")
    return {name: float(v) for name, v in zip(QUANTILES, picked.cpu())}
