"""The fused loss's chunk walk for a dense target (fused_chunks.py's `Chunks` with P made per chunk; docs/fused-loss.md).

Per chunk of c target tokens: the student's logits h Wᵀ (fused_chunks.py), the target P into a second buffer (the
teacher's logits h_t W_tᵀ made right here, in the teacher head's own dtype, then softmax / temperature / top-k;
or the cost-smoothed label), and a third buffer for the kernel (`dense.py`): three chunk x V buffers in all,
whatever N. The per-token likelihood (forward / reverse KL to P) is what the objective's rule sees as `ce`;
the logged CE is still the CE to the labels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from emotune.objectives.dense import dense_grad, dense_terms, target_probs
from emotune.objectives.fused_chunks import Chunks


def teacher_rows(teacher, hidden: Tensor, labels: Tensor, vocab: int, ignore_index: int):
    """(h_t [N,H_t], W_t, bias_t): the teacher's hidden rows that predict the same N targets as the student's."""
    if teacher is None:
        raise ValueError("target 'teacher' needs teacher=(hidden_t, weight_t, bias_t)")
    h_t, w_t, b_t = teacher
    if w_t.dim() != 2 or w_t.shape[0] != vocab:
        raise ValueError(f"the teacher's LM head {tuple(w_t.shape)} must be [V={vocab}, H_t] (same vocabulary)")
    if h_t.shape[:-1] != hidden.shape[:-1] or h_t.shape[-1] != w_t.shape[1]:
        raise ValueError(f"teacher hidden states {tuple(h_t.shape)} must match the student's {tuple(hidden.shape[:-1])} "
                         f"positions and the teacher head's width {w_t.shape[1]}")
    if h_t.dim() == 3:
        h_t, y = h_t[:, :-1, :], labels[:, 1:]
    else:
        y = labels
    return h_t[y != ignore_index].detach().to(w_t.dtype), w_t.detach(), None if b_t is None else b_t.detach()


class DenseChunks(Chunks):
    """`Chunks` whose chunk terms are the dense kernel's: (ce, likelihood, demd, q_y) and dL/dz from a, b."""

    def __init__(self, h, weight, bias, lora, y, e_hat, k_self, chunk_size, want, compile_, mm_dtype, objective, teacher):
        super().__init__(h, weight, bias, lora, y, e_hat if objective.uses_demd else None, k_self, chunk_size, want,
                         False, mm_dtype)
        self.spec, self.likelihood, self.demd = objective.target, objective.entry.likelihood, objective.uses_demd
        self.cost = e_hat  # the smoothed target reads it even without a DEMD term
        self.lik_all = torch.empty_like(self.ce_all)
        self.pbuf = torch.empty_like(self.zbuf)
        self.qbuf = self.kbuf if self.kbuf is not None else torch.empty_like(self.zbuf)
        self.teacher = teacher
        if teacher is not None:  # the teacher head's matmuls in its own dtype, as its lm_head would run
            h_t, w_t, b_t = teacher
            self.h_t, self.w_t, self.b_t = h_t.to(w_t.dtype), w_t, b_t

    def teacher_logits(self, s, e) -> Tensor | None:
        """Rows s:e of the teacher's logits: straight into the target buffer when the dtypes agree."""
        if self.teacher is None:
            return None
        with torch.no_grad():
            hs, out = self.h_t[s:e], self.pbuf[: e - s]
            if self.w_t.dtype != out.dtype:
                return hs @ self.w_t.T if self.b_t is None else torch.addmm(self.b_t, hs, self.w_t.T)
            return torch.mm(hs, self.w_t.T, out=out) if self.b_t is None else torch.addmm(self.b_t, hs, self.w_t.T, out=out)

    def chunk(self, s, e):
        z, y = self.logits(s, e), self.y[s:e]
        p = target_probs(self.pbuf[: e - s], y, self.spec, self.cost, self.teacher_logits(s, e))
        ce, lik, d, q_y, state = dense_terms(z, p, self.qbuf[: e - s], y, self.cost, self.likelihood, self.demd)
        self.ce_all[s:e], self.lik_all[s:e] = ce, lik
        if self.demd:
            self.d_all[s:e], self.qy_all[s:e] = d, q_y
        return state, None

    def backprop(self, s, e, q, k, a, b):
        self.apply(s, e, dense_grad(q, a, b))
