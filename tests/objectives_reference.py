"""Independent float64 references for the objective tests: explicit loops, a dense cost matrix,
numpy softmax. Nothing here calls emotune's code, so the tests compare two separate derivations."""

from __future__ import annotations

import numpy as np


def cost_matrix(E: np.ndarray) -> np.ndarray:
    """C[i, j] = 1 - cos(e_i, e_j), with the spec's eps policy for zero rows."""
    E = np.asarray(E, dtype=np.float64)
    norms = np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-6)
    En = E / norms
    return 1.0 - En @ En.T


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def targets(logits: np.ndarray, labels: np.ndarray, ignore: int = -100):
    """(z_t, y_t) pairs after the HF shift, in row order."""
    out = []
    B, T, _ = logits.shape
    for b in range(B):
        for t in range(T - 1):
            y = int(labels[b, t + 1])
            if y != ignore:
                out.append((np.asarray(logits[b, t], dtype=np.float64), y))
    return out


def per_token(logits, labels, E=None, gt_detach=False):
    """Per-token (mle, demd, p_y) lists."""
    C = None if E is None else cost_matrix(E)
    rows = []
    for z, y in targets(logits, labels):
        q = softmax(z)
        mle = -np.log(q[y])
        demd = None if C is None else float(q @ C[:, y]) + (q[y] if gt_detach else 0.0)
        rows.append((mle, demd, q[y]))
    return rows


def emo_value(logits, labels, E, variant="emo1", clamp=None, weighting="token", gt_detach=False):
    rows = per_token(logits, labels, E, gt_detach)
    if not rows:
        return 0.0
    mle = np.array([r[0] for r in rows])
    demd = np.array([r[1] for r in rows])
    if weighting == "batch":
        mle, demd = np.array([mle.mean()]), np.array([demd.mean()])
    if variant == "demd":
        vals = demd
    elif variant == "emo1":
        ratio = mle / np.maximum(demd, 1e-8)
        ratio = ratio if clamp is None else np.minimum(ratio, clamp)
        vals = 0.5 * (mle + ratio * demd)
    else:
        ratio = demd / np.maximum(mle, 1e-8)
        ratio = ratio if clamp is None else np.minimum(ratio, clamp)
        vals = ratio * mle + demd
    return float(vals.mean())
