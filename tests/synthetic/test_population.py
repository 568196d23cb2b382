"""EMO's population optimum (emotune.synthetic.population) against brute force and the project's own loss.

The optimum is the fixed point q = argmin F_q (the stop-gradient weights frozen at q). Independent checks on
a small vocabulary, float64: (1) a brute-force search over a fine simplex grid for the point whose frozen
objective no grid point beats (the smallest "gap"), (2) no random simplex point beats q* on F_{q*}, (3) the
gradient of the expected per-token loss of emotune.objectives (autograd through softmax) vanishes at q*.
"""

import numpy as np
import pytest
import torch

from emotune.objectives.losses import emo
from emotune.synthetic.population import (
    argmin_frozen,
    cost_matrix,
    frozen_objective,
    frozen_weights,
    population_optimum,
    stationarity_residual,
)


def simplex_grid(p: np.ndarray, n: int) -> np.ndarray:
    """Every point of the simplex with coordinates in multiples of 1/n, > 0 where p is (the last token must
    be in p's support), >= 0 elsewhere."""
    import itertools

    ranges = [range(1 if pk > 0 else 0, n) for pk in p[:-1]]
    pts = [c + (n - sum(c),) for c in itertools.product(*ranges) if sum(c) < n]
    return np.array(pts, dtype=np.float64) / n


def brute_force_equilibrium(p, cost, objective, grid):
    """The grid point q0 whose own frozen objective F_{q0} the grid cannot beat by much: min over q0 of
    F_{q0}(q0) - min_grid F_{q0}. No closed form, no fixed-point iteration."""
    gaps = []
    for q0 in grid:
        a, b = frozen_weights(objective, q0, p, cost)
        f = frozen_objective(grid, a, b)
        gaps.append(frozen_objective(q0, a, b)[0] - f.min())
    return grid[int(np.argmin(gaps))]


# (p, embedding): a full-support case, and one where a token outside p's support sits between the others
# (a DEMD pull can give it mass)
CASES = {
    "branch": (np.array([0.55, 0.25, 0.20]), np.array([[1.0, 0.2, 0.0], [0.1, 1.0, 0.3], [0.0, 0.4, 1.0]])),
    "off_support": (np.array([0.0, 0.5, 0.3, 0.2]),
                    np.array([[0.6, 0.6, 0.5], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])),
}


@pytest.mark.parametrize("objective", ["emo1", "emo2"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_optimum_matches_brute_force(objective, case):
    p, emb = CASES[case]
    cost = cost_matrix(emb)
    q = population_optimum(p, cost, objective)
    assert stationarity_residual(q, p, cost, objective) < 1e-10
    n = 80 if len(p) == 3 else 24
    brute = brute_force_equilibrium(p, cost, objective, simplex_grid(p, n))
    assert np.abs(brute - q).max() <= 1.5 / n, (brute, q)
    # nothing on 200k random simplex points beats q* on its own frozen objective
    rng = np.random.default_rng(0)
    a, b = frozen_weights(objective, q, p, cost)
    pts = rng.dirichlet(np.full(len(p), 0.7), size=200_000)
    assert frozen_objective(q, a, b)[0] <= frozen_objective(pts, a, b).min() + 1e-12
    # and q* moves away from p, in the direction DEMD's linearity predicts: less mass where p is small
    assert not np.allclose(q, p, atol=1e-3)


@pytest.mark.parametrize("objective", ["emo1", "emo2"])
def test_project_loss_gradient_vanishes_at_the_optimum(objective):
    """E_{y~p}[loss] of the training code, as a token mean over a batch whose labels have p's frequencies
    exactly (p in twentieths), has zero logit gradient at log q*."""
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(6, 4))
    counts = np.array([9, 5, 4, 2, 0, 0])  # p = counts / 20; two tokens outside the support
    p = counts / counts.sum()
    q = population_optimum(p, cost_matrix(emb), objective)
    labels = torch.tensor([-100] + [k for k, c in enumerate(counts) for _ in range(c)])[None]
    z = torch.tensor(np.log(np.maximum(q, 1e-300)), dtype=torch.float64, requires_grad=True)
    logits = z.expand(labels.shape[1], -1)[None]
    loss = emo(logits, labels, torch.tensor(emb), variant=objective).loss
    (grad,) = torch.autograd.grad(loss, z)
    assert grad.abs().max().item() < 1e-9
    # the same check fails away from the optimum (p itself is not stationary for EMO)
    z_p = torch.tensor(np.log(np.maximum(p, 1e-300)), dtype=torch.float64, requires_grad=True)
    (grad_p,) = torch.autograd.grad(emo(z_p.expand(labels.shape[1], -1)[None], labels, torch.tensor(emb),
                                        variant=objective).loss, z_p)
    assert grad_p.abs().max().item() > 1e-3


def test_mle_and_demd_limits():
    p, emb = CASES["off_support"]
    cost = cost_matrix(emb)
    assert np.allclose(population_optimum(p, cost, "mle"), p)
    # DEMD alone is linear in q: a point mass on the token of lowest expected cost, here off the support
    q = population_optimum(p, cost, "demd")
    assert q[int(np.argmin(cost @ p))] == 1.0 and q[0] == 1.0


def test_argmin_frozen_closed_form():
    """The frozen problem's minimiser against the random-point search, including the off-support branch."""
    # a token outside the support (a = 0) that is cheap enough takes the mass the log terms leave over
    assert np.allclose(argmin_frozen(np.array([0.5, 0.5, 0.0]), np.array([2.0, 2.0, 0.0])), [0.25, 0.25, 0.5])
    rng = np.random.default_rng(1)
    for _ in range(20):
        a = rng.dirichlet(np.ones(4)) * np.array([1, 1, 1, rng.integers(0, 2)])
        b = rng.uniform(0, 3, size=4)
        q = argmin_frozen(a, b)
        assert abs(q.sum() - 1) < 1e-12 and (q >= 0).all()
        pts = rng.dirichlet(np.ones(4), size=50_000)
        assert frozen_objective(q, a, b)[0] <= frozen_objective(pts, a, b).min() + 1e-12


def test_bad_input():
    with pytest.raises(ValueError, match="probability"):
        population_optimum(np.array([0.5, 0.6]), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="objective"):
        population_optimum(np.array([0.5, 0.5]), np.zeros((2, 2)), "kl")
