"""emotune.stats against lm-evaluation-harness's own stderr functions (the formula we promise to share)."""

from __future__ import annotations

import math
import random

import lm_eval.api.metrics as metrics  # pinned by the test extra: missing, this fails (it is not skipped)
import pytest

from emotune.stats import mean_stderr, proportion_stderr, with_stderr


@pytest.mark.parametrize("n,seed", [(2, 0), (3, 1), (7, 2), (50, 3), (1000, 4)])
def test_mean_stderr_is_the_harness_formula(n, seed):
    rng = random.Random(seed)
    scores = [float(rng.random() < 0.3) for _ in range(n)]
    floats = [rng.gauss(0, 2) for _ in range(n)]
    for xs in (scores, floats):
        assert mean_stderr(xs) == pytest.approx(metrics.mean_stderr(xs), rel=1e-12, abs=1e-15)
    p = sum(scores) / n  # 0/1 scores: the closed form from p and n alone
    assert proportion_stderr(p, n) == pytest.approx(metrics.mean_stderr(scores), rel=1e-12, abs=1e-15)
    assert proportion_stderr(p, n) == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)), rel=1e-12, abs=1e-15)


def test_degenerate_counts():
    assert mean_stderr([1.0]) is None and proportion_stderr(1.0, 1) is None and proportion_stderr(0.5, 0) is None
    assert proportion_stderr(1.0, 10) == 0.0 and proportion_stderr(0.0, 10) == 0.0
    out = with_stderr({"accuracy": 0.75, "other": 3.0, "single": 1.0}, {"accuracy": 4, "single": 1})
    assert out == {"accuracy": 0.75, "accuracy_stderr": pytest.approx(math.sqrt(0.75 * 0.25 / 3)), "other": 3.0,
                   "single": 1.0}
