"""Dense targets P (a teacher's distribution, or the label smoothed over *near* tokens): the per-token terms and
their logit gradient, one kernel behind the plain and the fused path (docs/objectives.md, *Dense targets*).

With q = softmax(z) the student's distribution and p the target row, per token:

    forward KL  kl  = sum_i p_i (log p_i - log q_i)          dkl/dz  = q - p
    reverse KL  rkl = sum_i q_i (log q_i - log p_i)          drkl/dz = q ⊙ (r - rkl),  r = log q - log p
    DEMD        d   = sum_i |q_i - p_i| (C p)_i  (Eq. 15)    dd/dz   = q ⊙ (s - <q, s>), s = sign(q - p) ⊙ C p
    C p = (sum p) - Ê (Êᵀ p)                                 (two thin matmuls, never a V x V cost)

The objective's combine rule then runs on (likelihood, demd) exactly as on (ce, demd) for a one-hot target, and
dL/dz = a dlik/dz + b dd/dz with a, b its per-token coefficients. For a one-hot p the forward KL is the CE and
the DEMD is the one-hot DEMD. q and p are computed by the *same* float operations (max, subtract, exp, divide),
so a teacher equal to the student gives p == q bit for bit and sign(q - p) = 0: zero DEMD gradient (the
absolute value's kink at q = p is where a distillation converges). Every chunk lives in three chunk x V
buffers (z, q, p); log p for the KL terms is taken in sub-blocks of a few rows (a small temporary).

Targets: `teacher`: softmax(z_teacher / temperature), optionally truncated to its top-k renormalised;
`smoothed`: (1 - ε) onehot(y) + ε softmax(-C[y] / τ), label smoothing towards tokens near y in the cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from emotune.objectives.token_terms import compute_dtype, no_autocast, row_blocks, unused_ranges

TARGETS = ("onehot", "teacher", "smoothed")
_SUB_ROWS = 32  # rows per log p temporary (32 x V floats)


@dataclass(frozen=True)
class TargetSpec:
    """How P is made from a chunk: the target kind and its parameters (the objective's `target*` options)."""

    kind: str = "onehot"
    temperature: float = 1.0
    top_k: int | None = None
    epsilon: float = 0.1
    tau: float = 0.1

    @classmethod
    def from_params(cls, params: dict) -> "TargetSpec":
        return cls(params.get("target", "onehot"), float(params.get("temperature", 1.0)), params.get("top_k"),
                   float(params.get("epsilon", 0.1)), float(params.get("tau", 0.1)))

    @property
    def dense(self) -> bool:
        return self.kind != "onehot"


def softmax_(z: Tensor) -> Tensor:
    """In place: softmax of each row, by the one sequence of operations used for both q and p."""
    z.sub_(z.amax(-1, keepdim=True)).exp_()
    return z.div_(z.sum(-1, keepdim=True))


def target_probs(out: Tensor, y: Tensor, spec: TargetSpec, e_hat: Tensor | None, teacher: Tensor | None) -> Tensor:
    """P for one chunk of c tokens into `out [c, V]` (float32 / float64). `teacher`: the chunk's teacher logits."""
    if spec.kind == "teacher":
        if teacher is None:
            raise ValueError("target 'teacher' needs the teacher's logits (or hidden states and LM head)")
        if teacher.data_ptr() != out.data_ptr():  # the fused path writes the teacher's logits into `out` itself
            out.copy_(teacher)
        if spec.temperature != 1.0:
            out.div_(spec.temperature)
        softmax_(out)
        if spec.top_k is not None and spec.top_k < out.shape[-1]:
            vals, idx = out.topk(spec.top_k, dim=-1)
            out.zero_().scatter_(-1, idx, vals / vals.sum(-1, keepdim=True))
        return out
    if spec.kind == "smoothed":  # softmax(-C[y]/τ) = softmax(cos(e_y, e_i)/τ): the constant 1 cancels
        torch.mm(e_hat[y], e_hat.T, out=out)
        softmax_(out.div_(spec.tau)).mul_(spec.epsilon)
        return out.scatter_add_(-1, y[:, None], torch.full((y.numel(), 1), 1.0 - spec.epsilon, dtype=out.dtype,
                                                           device=out.device))
    raise ValueError(f"target must be one of {TARGETS[1:]} here, got {spec.kind!r}")


def _log_floor(dtype: torch.dtype) -> float:
    """log of the smallest normal number: log p for a p that underflowed (or top-k dropped) stays finite."""
    return float(torch.log(torch.tensor(torch.finfo(dtype).tiny, dtype=torch.float64)))


def dense_terms(z: Tensor, p: Tensor, q: Tensor, y: Tensor, e_hat: Tensor | None, likelihood: str, demd: bool):
    """Per-token terms of one chunk. In: student logits `z`, target `p`, spare buffer `q` (all [c, V], compute
    dtype; all three are overwritten). Returns (ce to the label, likelihood, demd or None, q_y, state) where
    `state` is what `dense_grad` needs (the buffers are reused; nothing else is allocated at chunk x V)."""
    z.sub_(z.amax(-1, keepdim=True))
    torch.exp(z, out=q)
    norm = q.sum(-1, keepdim=True)
    q.div_(norm)  # softmax_'s sequence: q == p bit for bit when the logits are equal
    z.sub_(torch.log(norm))  # z = log q
    ce = -z.gather(-1, y[:, None]).squeeze(-1)
    q_y = q.gather(-1, y[:, None]).squeeze(-1)
    floor = _log_floor(z.dtype)
    lik = torch.empty_like(ce)
    for i in range(0, z.shape[0], _SUB_ROWS):  # z -> log q - log p, one small log p temporary at a time
        j = min(i + _SUB_ROWS, z.shape[0])
        z[i:j].sub_(torch.log(p[i:j]).clamp_min_(floor))
        if likelihood == "forward_kl":  # sum p (log p - log q); p = 0 terms are 0 (finite r times 0)
            lik[i:j] = -torch.bmm(p[i:j, None, :], z[i:j, :, None]).view(-1)
        else:
            lik[i:j] = torch.bmm(q[i:j, None, :], z[i:j, :, None]).view(-1)
    state = {"likelihood": likelihood, "lik": lik, "demd": None}
    d_val = None
    if demd:
        if likelihood != "forward_kl":
            raise ValueError("the generalised DEMD is mixed with the forward KL (the likelihood of a dense target)")
        s = z  # log q - log p is no longer needed: z becomes s = sign(q - p) ⊙ C p
        torch.mm(p @ e_hat, e_hat.T, out=s)
        torch.sub(p.sum(-1, keepdim=True), s, out=s).clamp_min_(0.0)  # C p >= 0 (cost in [0, 2], p >= 0)
        torch.sub(q, p, out=p)  # p -> q - p
        s.copysign_(p).masked_fill_(p == 0, 0.0)
        d_val = torch.bmm(p[:, None, :], s[:, :, None]).view(-1)  # sum |q - p| C p
        state["qs"] = torch.bmm(q[:, None, :], s[:, :, None]).view(-1)
        state["demd"] = d_val
    elif likelihood == "forward_kl":
        torch.sub(q, p, out=p)
    return ce, lik, d_val, q_y, (z, p, q, state)


def dense_grad(buffers, a: Tensor, b: Tensor | None) -> Tensor:
    """dL/dz of the chunk for coefficients a = dL/d likelihood, b = dL/d demd; written into a buffer."""
    z, d, q, state = buffers
    if state["likelihood"] == "reverse_kl":  # z = r
        return z.sub_(state["lik"][:, None]).mul_(q).mul_(a[:, None])
    if state["demd"] is None:
        return d.mul_(a[:, None])
    # z = s: a (q - p) + b q ⊙ (s - <q, s>)
    return z.sub_(state["qs"][:, None]).mul_(q).mul_(b[:, None]).addcmul_(d, a[:, None])


class PlainDenseTerms(torch.autograd.Function):
    """The plain path on materialised logits: (ce, likelihood, demd or empty, q_y) of the rows `flat[rows]`
    against the target rows (`teacher[rows]` or the smoothed labels), chunk by chunk; the backward recomputes
    each chunk (nothing N x V is saved beyond the inputs) and gives d/d flat only: the target is a constant."""

    @staticmethod
    def forward(ctx, flat, rows, y, teacher, e_hat, spec, likelihood, want_demd, chunk):
        with no_autocast(flat.device):
            cdt = compute_dtype(flat.dtype)
            n = rows.numel()
            out = [torch.empty(n, dtype=cdt, device=flat.device) for _ in range(4)]
            blocks = row_blocks(rows, chunk)
            for s, e, r in blocks:
                _, terms = _plain_chunk(flat, teacher, y, e_hat, spec, likelihood, want_demd, s, e, r, cdt)
                for o, t in zip(out, terms):
                    if t is not None:
                        o[s:e] = t
        ctx.save_for_backward(flat, y, *(() if teacher is None else (teacher,)))
        ctx.args = (e_hat, spec, likelihood, want_demd, blocks, cdt, teacher is not None)
        ce, lik, d, q_y = out
        ctx.mark_non_differentiable(ce, q_y)
        return ce, lik, d if want_demd else d[:0], q_y

    @staticmethod
    def backward(ctx, _g_ce, g_lik, g_demd, _g_qy):
        flat, y, *rest = ctx.saved_tensors
        e_hat, spec, likelihood, want_demd, blocks, cdt, has_teacher = ctx.args
        teacher = rest[0] if has_teacher else None
        with no_autocast(flat.device):
            grad = torch.empty_like(flat)
            for lo, hi in unused_ranges(blocks, flat.shape[0]):
                grad[lo:hi].zero_()
            n = y.numel()
            a_all = torch.zeros(n, dtype=cdt, device=flat.device) if g_lik is None else g_lik.to(cdt)
            b_all = None
            if want_demd:
                b_all = torch.zeros(n, dtype=cdt, device=flat.device) if g_demd is None else g_demd.to(cdt)
            for s, e, r in blocks:
                buffers, _ = _plain_chunk(flat, teacher, y, e_hat, spec, likelihood, want_demd, s, e, r, cdt)
                grad[r: r + e - s] = dense_grad(buffers, a_all[s:e], None if b_all is None else b_all[s:e])
        return grad, None, None, None, None, None, None, None, None


def _plain_chunk(flat, teacher, y, e_hat, spec, likelihood, want_demd, s, e, r, cdt):
    z = flat[r: r + e - s].to(cdt, copy=True)
    p = torch.empty_like(z)
    target_probs(p, y[s:e], spec, e_hat, None if teacher is None else teacher[r: r + e - s])
    ce, lik, d, q_y, buffers = dense_terms(z, p, torch.empty_like(z), y[s:e], e_hat, likelihood, want_demd)
    return buffers, (ce, lik, d, q_y)
