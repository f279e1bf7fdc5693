"""Feature probe: how the penultimate features of one fixed example spread as training goes.

Every epoch the pooled feature vector of the first validation example is sorted and its
1st, 20th, 80th and 99th percentiles recorded (the seed study's quantile plot).
"""

from __future__ import annotations

import torch

from experiments.metric_names import QUANTILES


@torch.no_grad()
def feature_quantiles(features: torch.Tensor) -> dict[str, float]:
    """Percentiles of one feature vector. features: (D,) or (1, D)."""
    values = features.detach().float().flatten().sort().values
    q = torch.quantile(values, torch.tensor(list(QUANTILES.values()), device=values.device))
    return {name: float(v) for name, v in zip(QUANTILES, q.cpu())}
