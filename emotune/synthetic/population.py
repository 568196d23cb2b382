"""Where an objective drives the next-token distribution when the data is the oracle: the population optimum.

At one context the language's next-token distribution p is known exactly. Trained on endless text from it,
a per-token objective l(q, y) (docs/objectives.md) is minimised in expectation over y ~ p, with no model in
the way: q* is the stationary point of E_{y~p}[l(q, y)] over the simplex (a free logit vector). That is what
the report's calibration table predicts for EMO without training anything.

Every objective here has the same shape once its stop-gradient weights are frozen at the current q:

    F(q) = sum_k a_k (-log q_k) + sum_k b_k q_k          (a_k >= 0, b_k >= 0)

- MLE      a = p,                      b = 0                        -> q* = p
- DEMD     a = 0,                      b = C p                      -> a point mass on argmin_k (C p)_k
- EMO-1    a = p / 2,                  b_k = 1/2 sum_y p_y w_y C[k,y],  w_y = sg(mle_y / demd_y)
- EMO-2    a_k = p_k u_k, u = sg(demd / mle),  b = C p

with mle_y = -log q_y and demd_y = (C q)_y (docs/objectives.md: DEMD is linear in q, so on its own it only
moves mass towards the token of lowest expected cost). For frozen (a, b), F is convex and its minimiser is
closed form up to one scalar: q_k = a_k / (b_k + λ) where a_k > 0, and the tokens with a_k = 0 (outside the
language's support) take mass only at the smallest b_k, when λ = -min b there leaves some over. The
stop-gradient makes the weights depend on q, so q* is the fixed point q = argmin F_{q}: found by iterating the
closed form (damped) in float64 until q stops moving, then checked by its KKT residual.
"""

from __future__ import annotations

import math

import numpy as np

OBJECTIVES = ("mle", "demd", "emo1", "emo2")
RATIO_EPS = 1e-8  # the losses' guard on a ratio's denominator (docs/objectives.md)
_EPS = float(np.finfo(np.float64).eps)


def cost_matrix(embedding: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """C[i, j] = 1 - cos(e_i, e_j) with rows normalised as the losses do (`e / max(|e|, eps)`), float64."""
    e = np.asarray(embedding, dtype=np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), eps)
    return 1.0 - e @ e.T


def frozen_weights(objective: str, q: np.ndarray, p: np.ndarray, cost: np.ndarray,
                   ratio_clamp: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of F at the current q: the stop-gradient weights evaluated there. Only y with p_y > 0 enter."""
    if objective == "mle":
        return p.copy(), np.zeros_like(p)
    cp = cost @ p
    if objective == "demd":
        return np.zeros_like(p), cp
    sup = p > 0
    with np.errstate(divide="ignore"):
        mle = -np.log(q)
    demd = cost.T @ q  # demd_y = sum_i q_i C[i, y]
    if objective == "emo1":
        w = np.zeros_like(p)
        w[sup] = mle[sup] / np.maximum(demd[sup], RATIO_EPS)
        if ratio_clamp is not None:
            w = np.minimum(w, ratio_clamp)
        return 0.5 * p, 0.5 * (cost @ (p * w))
    if objective == "emo2":
        u = np.zeros_like(p)
        u[sup] = demd[sup] / np.maximum(mle[sup], RATIO_EPS)
        if ratio_clamp is not None:
            u = np.minimum(u, ratio_clamp)
        return p * u, cp
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")


def argmin_frozen(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The exact minimiser of sum_k a_k(-log q_k) + b·q over the simplex (a, b >= 0, some a_k > 0 or not)."""
    pos = a > 0
    q = np.zeros_like(a, dtype=np.float64)
    if not pos.any():  # linear: all mass on the cheapest token(s), split evenly among exact ties
        best = b == b.min()
        q[best] = 1.0 / best.sum()
        return q
    ap, bp = a[pos], b[pos]
    floor = -bp.min()  # S(λ) = sum a/(b+λ) is finite and decreasing for λ > floor
    off = b[~pos]
    if off.size and -off.min() > floor:  # a token off the support could be cheaper than every supported one
        lam0 = -off.min()
        mass = float((ap / (bp + lam0)).sum())
        if mass <= 1.0:
            q[pos] = ap / (bp + lam0)
            best = np.flatnonzero(~pos)[off == off.min()]
            q[best] = (1.0 - mass) / len(best)
            return q
        floor = lam0
    # S(λ) = 1: S is convex and decreasing on (floor, inf), so Newton from a point with S < 1 stays bracketed;
    # a step that leaves the bracket bisects instead. Stops when λ stops moving in float64.
    lo, hi = floor, floor + ap.sum() + 1.0  # b + hi >= hi - floor on the support, so S(hi) < 1
    lam = hi
    for _ in range(200):
        r = ap / (bp + lam)
        s_val = float(r.sum()) - 1.0
        slope = -float(r @ (1.0 / (bp + lam)))
        if s_val > 0:
            lo = lam
        else:
            hi = lam
        nxt = lam - s_val / slope
        if not lo < nxt < hi:
            nxt = 0.5 * (lo + hi)
        if nxt == lam or hi - lo <= 4 * _EPS * max(1.0, abs(hi)):
            break
        lam = nxt
    hi = lam
    q[pos] = ap / (bp + hi)
    return q / q.sum()


def population_optimum(p: np.ndarray, cost: np.ndarray, objective: str = "emo1", ratio_clamp: float | None = None,
                       tol: float = 1e-14, max_iter: int = 20000) -> np.ndarray:
    """q* with q* = argmin F_{q*} (see the module docstring), float64. `cost` is the [V, V] cost matrix
    (cost_matrix(E)); `p` the oracle's next-token distribution over the same V tokens."""
    p = np.asarray(p, dtype=np.float64)
    cost = np.asarray(cost, dtype=np.float64)
    if p.ndim != 1 or cost.shape != (p.size, p.size):
        raise ValueError(f"p must be [V] and cost [V, V]; got {p.shape} and {cost.shape}")
    if (p < 0).any() or not math.isclose(p.sum(), 1.0, rel_tol=0, abs_tol=1e-9):
        raise ValueError("p must be a probability distribution")
    p = p / p.sum()
    if objective in ("mle", "demd"):
        return argmin_frozen(*frozen_weights(objective, p, p, cost))
    sup = np.flatnonzero(p > 0)
    if sup.size < p.size:  # solve on the support (small), keep it if no token outside wants mass (KKT)
        q = np.zeros_like(p)
        q[sup] = _fixed_point(p[sup], cost[np.ix_(sup, sup)], objective, ratio_clamp, tol, max_iter)
        if stationarity_residual(q, p, cost, objective, ratio_clamp) < 1e-9:
            return q
    return _fixed_point(p, cost, objective, ratio_clamp, tol, max_iter)


def _fixed_point(p, cost, objective, ratio_clamp, tol, max_iter) -> np.ndarray:
    q = p.copy()  # start at the truth: the weights are finite there
    step = 1.0
    prev_move = math.inf
    for _ in range(max_iter):
        target = argmin_frozen(*frozen_weights(objective, q, p, cost, ratio_clamp))
        # damped in log space where both are positive (a geometric step keeps q inside the simplex)
        with np.errstate(divide="ignore", invalid="ignore"):
            mix = np.where((q > 0) & (target > 0), np.exp((1 - step) * np.log(q) + step * np.log(target)), target)
        new = mix / mix.sum()
        move = float(np.abs(new - q).max())
        q = new
        if move < tol:
            break
        if move > prev_move:  # oscillating: damp harder
            step = max(step * 0.5, 1e-3)
        prev_move = move
    return q


def stationarity_residual(q: np.ndarray, p: np.ndarray, cost: np.ndarray, objective: str = "emo1",
                          ratio_clamp: float | None = None) -> float:
    """max |projected gradient| of the stop-gradient field at q, relative: 0 at the fixed point. On the
    support, -a_k/q_k + b_k must be one constant (-λ); off it, b_k + λ >= 0."""
    a, b = frozen_weights(objective, q, p, cost, ratio_clamp)
    live = q > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        g = np.where(live, b - np.where(live, a / np.where(live, q, 1.0), 0.0), b)
    lam = -float((q * g).sum())  # the multiplier that balances the live tokens
    scale = max(float(np.abs(g[live]).max()), 1.0)
    res_live = float(np.abs(g[live] + lam).max())
    res_off = float(np.maximum(-(g[~live] + lam), 0.0).max()) if (~live).any() else 0.0
    return max(res_live, res_off) / scale


def frozen_objective(q: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """F(q) for one [V] or many [N, V] points (inf where a_k > 0 and q_k = 0)."""
    q = np.atleast_2d(q)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(a > 0, -np.log(q) * a, 0.0)
    return logs.sum(-1) + q @ b
