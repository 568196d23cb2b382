"""What every objective shares: the HF label shift, the -100 mask, float32 math, the token mean.

Conventions: `logits [B,T,V]`, `labels [B,T]` *not* shifted; position t's logits predict
`labels[:, t+1]`; `-100` marks a position that is not a target. Ignored rows are never read (no
softmax, no copy), so they cost nothing and can never produce a NaN (an fp16 row full of inf in a
padded position is simply skipped), and they receive an exact zero gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from emotune.objectives.plain_terms import PlainTerms
from emotune.objectives.token_terms import compute_dtype, plain_chunk_rows, self_cost

IGNORE_INDEX = -100
# Every ratio guards its denominator with this (docs/objectives.md, *Mixing MLE and DEMD*).
RATIO_EPS = 1e-8


def target_rows(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, Tensor, Tensor]:
    """`(flat [B*T, V], rows [N], y [N])`: the logits as rows (a view, no copy) and, for each of the N
    target tokens, the row that predicts it (position t predicts `labels[:, t+1]`) and its label."""
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(f"expected logits [B,T,V] and labels [B,T], got {tuple(logits.shape)} and {tuple(labels.shape)}")
    B, T, V = logits.shape
    y = labels[:, 1:]
    keep = y != ignore_index
    bt = keep.nonzero()
    rows = (bt[:, 0] * T + bt[:, 1]).to(logits.device)
    y = y[keep].to(logits.device)
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= V):
        raise ValueError(f"label ids must lie in [0, {V}) or be {ignore_index}; got {int(y.min())}..{int(y.max())}")
    return logits.reshape(B * T, V), rows, y


def token_terms(logits: Tensor, labels: Tensor, e_hat: Tensor | None = None,
                ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Per-token `(ce, demd, sg(q_y))` of the N target tokens, float32 (float64 stays float64), differentiable
    w.r.t. the logits; `demd` and `q_y` are None without a cost matrix Ê. See `token_terms.py` for the math."""
    flat, rows, y = target_rows(logits, labels, ignore_index)
    cdt = compute_dtype(logits.dtype)
    k_self = None
    if e_hat is not None:
        e_hat = e_hat.detach().to(device=logits.device, dtype=cdt)
        k_self = self_cost(e_hat[y])
    ce, demd, q_y = PlainTerms.apply(flat, rows, y, e_hat, k_self, plain_chunk_rows(logits.shape[-1], logits.device))
    return (ce, None, None) if e_hat is None else (ce, demd, q_y)


def token_mean(per_token: Tensor, num_items: int | Tensor | None = None) -> Tensor:
    """`sum / max(count, 1)`; with `num_items` (HF `num_items_in_batch`) the sum is divided by it instead,
    so gradient accumulation over micro-batches equals one large batch. A divisor below 1 is legitimate
    (a step with fewer targets than ranks x accumulation steps: train.py clamps the *count*); only a
    divisor <= 0 is replaced by 1 (the sum is 0 then anyway)."""
    if num_items is None:
        return per_token.sum() / max(per_token.numel(), 1)
    denom = torch.as_tensor(num_items, dtype=per_token.dtype, device=per_token.device)
    return per_token.sum() / torch.where(denom > 0, denom, torch.ones_like(denom))


@dataclass
class LossOutput:
    """The scalar to optimise plus what a trainer logs, from the same forward pass.

    `ce` is always the plain token-mean cross-entropy (perplexity = exp(ce)), so runs with different
    objectives can be compared; `demd` and `weight` are None where the objective has none.
    """

    loss: Tensor
    ce: Tensor
    n_tokens: Tensor
    demd: Tensor | None = None
    weight: Tensor | None = None

    def metrics(self, prefix: str = "") -> dict[str, float]:
        out = {f"{prefix}loss": float(self.loss.detach()), f"{prefix}ce": float(self.ce), f"{prefix}n_tokens": int(self.n_tokens)}
        if self.demd is not None:
            out[f"{prefix}demd"] = float(self.demd)
        if self.weight is not None:
            out[f"{prefix}weight"] = float(self.weight)
        return out


def make_output(loss: Tensor, mle: Tensor, demd: Tensor | None = None, weight: Tensor | None = None) -> LossOutput:
    n = torch.tensor(mle.numel(), device=mle.device)
    with torch.no_grad():
        return LossOutput(
            loss=loss,
            ce=token_mean(mle.detach()),
            n_tokens=n,
            demd=None if demd is None else token_mean(demd.detach()),
            weight=None if weight is None else token_mean(weight.detach()),
        )
