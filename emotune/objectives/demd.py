"""DEMD, the differentiable upper bound of the earth mover distance (paper Eq. 14-15; docs/objectives.md, *DEMD*).

With cost C[i, j] = 1 - ê_i · ê_j (Ê row-normalised), everything is computed through Ê, never through
a dense V x V cost or a dense one-hot:

- one-hot target y:  demd_t = sum_{i != y} q_i C[i, y] + q_y C[y, y]        (tight: equals the exact EMD)
  with C[:, y] = 1 - Ê Ê[y] and the target's own cost C[y, y] taken exactly (0 for a unit row). The
  shorter `1 - (Êᵀ q)·Ê[y]` cancels catastrophically in float32 for a confident model (true 5e-11,
  computed ±1e-7), which is why it is not used.
- dense target p:    demd_t = |q - p|ᵀ C p,  C p = (sum p) - Ê (Êᵀ p)       (Eq. 15)

The gradient w.r.t. the logits of the one-hot form is q_k (C[k, y] - demd_t); autograd produces exactly
that because Ê is detached. The objectives use the chunked kernel in `token_terms.py`, the same formula.
"""

from __future__ import annotations

from torch import Tensor

from emotune.objectives.token_terms import self_cost


def demd_one_hot(q: Tensor, y: Tensor, e_hat: Tensor) -> Tensor:
    """Per-token DEMD `[N]` for probabilities `q [N,V]`, targets `y [N]`, normalised cost embedding `Ê [V,H']`."""
    e_hat = e_hat.detach().to(q.dtype)
    k = 1.0 - e_hat[y] @ e_hat.T  # [N, V]: C[i, y_t] per row
    k = k.scatter(-1, y[:, None], self_cost(e_hat[y])[:, None])
    return (q * k).sum(-1)


def demd_dense(q: Tensor, p: Tensor, e_hat: Tensor) -> Tensor:
    """Generalised DEMD `|q - p|ᵀ C p` per row, for a dense target distribution `p [N,V]` (paper Eq. 15).

    Used with soft targets such as a teacher's distribution. Gradients flow to `q` (and to `p` if it
    requires them); the cost embedding never receives one.
    """
    e_hat = e_hat.detach().to(q.dtype)
    c_p = p.sum(-1, keepdim=True) - (p @ e_hat) @ e_hat.T  # (C p)_i = sum_j p_j (1 - ê_i·ê_j)
    return ((q - p).abs() * c_p).sum(-1)
