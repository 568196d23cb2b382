"""What every objective shares: the HF label shift, the -100 mask, float32 math, the token mean.

Conventions (EMO.md section 1): `logits [B,T,V]`, `labels [B,T]` *not* shifted; position t's
logits predict `labels[:, t+1]`; `-100` marks a position that is not a target. Ignored rows are
dropped before any softmax, so they cost nothing and can never produce a NaN (an fp16 row full of
inf in a padded position is simply never read), and they receive an exact zero gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

IGNORE_INDEX = -100
# Every ratio guards its denominator with this (EMO.md section 4).
RATIO_EPS = 1e-8


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for any model dtype (bf16/fp16/fp32); float64 stays float64 (reference tests)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def select_targets(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, Tensor]:
    """Shift, mask and upcast: returns `(z [N,V], y [N])` for the N target tokens of the batch."""
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(f"expected logits [B,T,V] and labels [B,T], got {tuple(logits.shape)} and {tuple(labels.shape)}")
    z = logits[:, :-1, :]
    y = labels[:, 1:]
    keep = y != ignore_index
    z = z[keep].to(compute_dtype(logits.dtype))
    y = y[keep]
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= logits.shape[-1]):
        raise ValueError(f"label ids must lie in [0, {logits.shape[-1]}) or be {ignore_index}; got {int(y.min())}..{int(y.max())}")
    return z, y


def token_ce_and_probs(z: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token cross-entropy `mle_t` and the softmax `q`, both computed stably.

    `mle_t = (zmax - z_y) + log sum_i exp(z_i - zmax)`, with the sum taken without its largest
    term and put through log1p: for a confident token `lse - z_y` would cancel to exactly 0 in
    float32, and EMO-2 divides by `mle_t`.
    """
    zmax, imax = z.max(dim=-1, keepdim=True)
    shifted = z - zmax
    rest = shifted.exp().scatter(-1, imax, 0.0).sum(-1)  # every term but the (first) max, which is exp(0)=1
    log_norm = torch.log1p(rest)
    z_y = shifted.gather(-1, y[:, None]).squeeze(-1)
    mle = log_norm - z_y
    q = (shifted - log_norm[:, None]).exp()
    return mle, q


def token_mean(per_token: Tensor, num_items: int | Tensor | None = None) -> Tensor:
    """`sum / max(count, 1)`; with `num_items` (HF `num_items_in_batch`) the sum is divided by it instead,
    so gradient accumulation over micro-batches equals one large batch."""
    denom = per_token.new_tensor(float(per_token.numel())) if num_items is None else torch.as_tensor(
        num_items, dtype=per_token.dtype, device=per_token.device
    )
    return per_token.sum() / denom.clamp_min(1.0)


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
