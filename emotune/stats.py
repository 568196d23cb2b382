"""Standard errors of evaluation metrics, as lm-evaluation-harness computes them (no torch, no numpy).

The harness reports a mean metric (accuracy) with `mean_stderr`: the sample standard deviation of the
per-example scores (denominator n - 1) over sqrt(n). For 0/1 scores with mean p that is exactly
sqrt(p (1 - p) / (n - 1)). Both forms live here so that every summary, the store and the report use one
formula; tests/test_stats.py checks them against the harness's own functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def mean_stderr(values: Sequence[float]) -> float | None:
    """Standard error of the mean of `values` (sample std, n - 1, over sqrt(n)); None below two values,
    where the sample std is undefined (the harness reports "N/A" there)."""
    n = len(values)
    if n < 2:
        return None
    mu = math.fsum(values) / n
    var = math.fsum((x - mu) ** 2 for x in values) / (n - 1)
    return math.sqrt(var / n)


def proportion_stderr(p: float, n: int) -> float | None:
    """mean_stderr of n scores that are 0 or 1 with mean p, from p and n alone: sqrt(p (1 - p) / (n - 1))."""
    if n < 2:
        return None
    return math.sqrt(max(p * (1.0 - p), 0.0) / (n - 1))


def with_stderr(metrics: dict[str, float], counts: dict[str, int]) -> dict[str, float]:
    """`metrics` plus `<name>_stderr` for every proportion `name` in `counts` (its number of 0/1 scores)."""
    out = dict(metrics)
    for name, n in counts.items():
        se = proportion_stderr(metrics[name], n)
        if se is not None:
            out[f"{name}_stderr"] = se
    return out
