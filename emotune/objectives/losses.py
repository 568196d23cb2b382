"""MLE, TaiLr, MixCE and EMO on HF-style `(logits [B,T,V], labels [B,T])` (docs/objectives.md).

Each objective is a *combine rule* on the per-token terms: `rule(ce, demd, q_y, mean, **params) -> Combined`
(the loss, the per-token weight and the DEMD as logged). The plain path here and the fused path
(`fused.py`) run the very same rule; they differ only in how the per-token terms are produced and in
`mean`, the token mean of their own divisor (`common.token_mean` here, the fused loss's tensor divisor
there), so neither path can drift from the other.

Every public function returns a `LossOutput`: the token-mean loss to optimise plus plain CE, mean DEMD
and mean weight for logging. `num_items_in_batch` (as passed by HF Trainer) replaces the local token
count in the mean, so accumulated micro-batches equal one large batch. The per-token terms come from
`common.token_terms` (float32, autocast off, no copy of the logits, only what the objective needs); the
rules are ordinary autograd on N-vectors.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from emotune.objectives.common import IGNORE_INDEX, RATIO_EPS, LossOutput, make_output, token_mean, token_terms
from emotune.objectives.cost import CostEmbedding, as_matrix
from emotune.objectives.token_terms import no_autocast

EMO_VARIANTS = ("emo1", "emo2", "demd")
WEIGHTINGS = ("token", "batch")

Mean = Callable[[Tensor], Tensor]


class Combined(NamedTuple):
    """What a combine rule gives: the loss (already a mean), the per-token weight and the DEMD as logged."""

    loss: Tensor
    weight: Tensor | None = None
    demd: Tensor | None = None


# ---------------------------------------------------------------------------------------------------
# The combine rules: (ce, demd, q_y, mean, **params) -> Combined. demd / q_y are None without a cost.


def mle_rule(ce: Tensor, demd: Tensor | None, q_y: Tensor | None, mean: Mean) -> Combined:
    return Combined(mean(ce))


def tailr_weight(p: Tensor, gamma: float, min_weight: float) -> Tensor:
    """TaiLr's token weight `p / (γ + (1-γ) p)`, clamped to `[min_weight, 1]`, without gradient."""
    p = p.detach()
    return (p / (gamma + (1.0 - gamma) * p).clamp_min(RATIO_EPS)).clamp(min_weight, 1.0)


def tailr_rule(ce, demd, q_y, mean: Mean, gamma: float = 0.1, min_weight: float = 0.2) -> Combined:
    w = tailr_weight(torch.exp(-ce), gamma, min_weight)
    return Combined(mean(w * ce), w)


def mixce_weight(p: Tensor, eta: float) -> Tensor:
    """MixCE's coefficient `η + (1-η) sg(p_t)`."""
    return eta + (1.0 - eta) * p.detach()


def mixce_rule(ce, demd, q_y, mean: Mean, eta: float = 0.8) -> Combined:
    w = mixce_weight(torch.exp(-ce), eta)
    return Combined(mean(w * ce), w)


def kd_rule(lik: Tensor, demd, q_y, mean: Mean) -> Combined:
    """Plain distillation: the token mean of the likelihood term (forward or reverse KL to the target)."""
    return Combined(mean(lik))


def mix_mle_demd(ce: Tensor, demd: Tensor, variant: str, ratio_clamp: float | None) -> tuple[Tensor, Tensor | None]:
    """Combine per-token (or batch-mean) MLE and DEMD; returns (loss terms, stop-gradient ratio).

    emo1: 0.5 * (mle + sg(mle/demd) * demd)   emo2: sg(demd/mle) * mle + demd   demd: demd
    """
    if variant == "demd":
        return demd, None
    if variant == "emo1":
        ratio = ce.detach() / demd.detach().clamp_min(RATIO_EPS)
    else:
        ratio = demd.detach() / ce.detach().clamp_min(RATIO_EPS)
    if ratio_clamp is not None:
        ratio = ratio.clamp_max(ratio_clamp)
    if variant == "emo1":
        return 0.5 * (ce + ratio * demd), ratio
    return ratio * ce + demd, ratio


def emo_rule(ce, demd, q_y, mean: Mean, variant: str = "emo1", ratio_clamp: float | None = None,
             weighting: str = "token", gt_detach: bool = False) -> Combined:
    if variant not in EMO_VARIANTS:
        raise ValueError(f"emo variant must be one of {EMO_VARIANTS}, got {variant!r}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"emo weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    d = demd + q_y.detach() if gt_detach else demd  # (ce is the forward KL for a dense target, demd Eq. 15's)
    if weighting == "token":
        per_token, ratio = mix_mle_demd(ce, d, variant, ratio_clamp)
        return Combined(mean(per_token), ratio, d)
    loss, ratio = mix_mle_demd(mean(ce), mean(d), variant, ratio_clamp)
    return Combined(loss, None if ratio is None else ratio.expand(ce.shape), d)


# ---------------------------------------------------------------------------------------------------
# The plain path: per-token terms from materialised logits, then the rule.


def _plain(rule, logits: Tensor, labels: Tensor, cost, num_items_in_batch, ignore_index: int, **params) -> LossOutput:
    with no_autocast(logits.device):
        e_hat = None if cost is None else as_matrix(cost, logits.shape[-1], logits.device)
        ce, demd, q_y = token_terms(logits, labels, e_hat, ignore_index)
        out = rule(ce, demd, q_y, lambda t: token_mean(t, num_items_in_batch), **params)
        return make_output(out.loss, ce, demd=out.demd, weight=out.weight)


def mle(logits: Tensor, labels: Tensor, num_items_in_batch=None, ignore_index: int = IGNORE_INDEX) -> LossOutput:
    """Maximum likelihood: `mle_t = -log q_t[y_t]`."""
    return _plain(mle_rule, logits, labels, None, num_items_in_batch, ignore_index)


def tailr(logits: Tensor, labels: Tensor, gamma: float = 0.1, min_weight: float = 0.2, num_items_in_batch=None,
          ignore_index: int = IGNORE_INDEX) -> LossOutput:
    """TaiLr (official fairseq code): `sg(w_t) * mle_t`."""
    return _plain(tailr_rule, logits, labels, None, num_items_in_batch, ignore_index, gamma=gamma, min_weight=min_weight)


def mixce(logits: Tensor, labels: Tensor, eta: float = 0.8, num_items_in_batch=None,
          ignore_index: int = IGNORE_INDEX) -> LossOutput:
    """MixCE (official approximation): `(η + (1-η) sg(p_t)) * mle_t`; η = 1 is MLE."""
    return _plain(mixce_rule, logits, labels, None, num_items_in_batch, ignore_index, eta=eta)


def emo(logits: Tensor, labels: Tensor, cost: Tensor | CostEmbedding, variant: str = "emo1",
        ratio_clamp: float | None = None, weighting: str = "token", gt_detach: bool = False,
        num_items_in_batch=None, ignore_index: int = IGNORE_INDEX) -> LossOutput:
    """EMO: MLE mixed with DEMD by the dynamic weight (paper Eq. 19; docs/objectives.md, *Mixing MLE and DEMD*).

    - `variant`: `emo1` (default), `emo2` (the continual fine-tuning scripts' default) or `demd` (ablation).
    - `ratio_clamp`: cap the stop-gradient ratio (the official "clamped" class uses 3.0).
    - `weighting`: `token` (official, per-token ratio) or `batch` (ratio of the batch means).
    - `gt_detach`: the official LLaMA code's latest variant, subtracting sg(q_y) from q before the
      product: the DEMD value becomes `demd_t + q_y` (and so the weight), its gradient is unchanged.
    - `cost`: the cost embedding (a `CostEmbedding`, or a raw `[V, H']` tensor normalised here).
    """
    if variant not in EMO_VARIANTS:  # before any work (the rule checks again for the fused path)
        raise ValueError(f"emo variant must be one of {EMO_VARIANTS}, got {variant!r}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"emo weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    return _plain(emo_rule, logits, labels, cost, num_items_in_batch, ignore_index, variant=variant,
                  ratio_clamp=ratio_clamp, weighting=weighting, gt_detach=gt_detach)


# ---------------------------------------------------------------------------------------------------
# Dense targets (a teacher, or cost-smoothed labels): the same rules on (likelihood, generalised DEMD).


def dense_plain(rule, likelihood: str, want_demd: bool, logits: Tensor, labels: Tensor, spec,
                teacher_logits: Tensor | None, cost, num_items_in_batch, ignore_index: int = IGNORE_INDEX,
                **params) -> LossOutput:
    """The plain path for a dense target: per-token (ce, likelihood, demd) from `dense.PlainDenseTerms`, then the
    objective's rule on (likelihood, demd). `teacher_logits [B,T,V]` are aligned with `logits` (row t predicts
    `labels[:, t+1]` for both); the logged `ce` is the CE to the labels, comparable across objectives."""
    from emotune.objectives.common import target_rows
    from emotune.objectives.dense import PlainDenseTerms
    from emotune.objectives.token_terms import compute_dtype, plain_chunk_rows

    with no_autocast(logits.device):
        flat, rows, y = target_rows(logits, labels, ignore_index)
        cdt = compute_dtype(logits.dtype)
        e_hat = None if cost is None else as_matrix(cost, logits.shape[-1], logits.device).to(cdt)
        teacher = None
        if spec.kind == "teacher":
            if teacher_logits is None:
                raise ValueError("target 'teacher' needs teacher_logits [B,T,V]")
            if teacher_logits.shape != logits.shape:
                raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} do not match the student's {tuple(logits.shape)}")
            teacher = teacher_logits.detach().reshape(flat.shape)
        chunk = plain_chunk_rows(logits.shape[-1], logits.device, demd=want_demd)
        ce, lik, demd, q_y = PlainDenseTerms.apply(flat, rows, y, teacher, e_hat, spec, likelihood, want_demd, chunk)
        out = rule(lik, demd if want_demd else None, q_y, lambda t: token_mean(t, num_items_in_batch), **params)
        return make_output(out.loss, ce, demd=out.demd, weight=out.weight)


def _kd(likelihood: str, logits, labels, teacher_logits, cost, target, temperature, top_k, epsilon, tau,
        num_items_in_batch, ignore_index) -> LossOutput:
    from emotune.objectives.dense import TargetSpec

    spec = TargetSpec(target, temperature, top_k, epsilon, tau)
    return dense_plain(kd_rule, likelihood, False, logits, labels, spec, teacher_logits, cost, num_items_in_batch,
                       ignore_index)


def kd_forward(logits: Tensor, labels: Tensor, teacher_logits: Tensor | None = None, cost=None, target: str = "teacher",
               temperature: float = 1.0, top_k: int | None = None, epsilon: float = 0.1, tau: float = 0.1,
               num_items_in_batch=None, ignore_index: int = IGNORE_INDEX) -> LossOutput:
    """Distillation baseline, forward KL: `sum_i p_i log(p_i / q_i)` to the dense target P.

    Hinton's KD at the teacher's temperature (the student's distribution at temperature 1)."""
    return _kd("forward_kl", logits, labels, teacher_logits, cost, target, temperature, top_k, epsilon, tau,
               num_items_in_batch, ignore_index)


def kd_reverse(logits: Tensor, labels: Tensor, teacher_logits: Tensor | None = None, cost=None, target: str = "teacher",
               temperature: float = 1.0, top_k: int | None = None, epsilon: float = 0.1, tau: float = 0.1,
               num_items_in_batch=None, ignore_index: int = IGNORE_INDEX) -> LossOutput:
    """Distillation baseline, reverse KL: `sum_i q_i log(q_i / p_i)` to the dense target P (mode seeking)."""
    return _kd("reverse_kl", logits, labels, teacher_logits, cost, target, temperature, top_k, epsilon, tau,
               num_items_in_batch, ignore_index)
