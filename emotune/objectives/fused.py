"""Fused linear + objective: every loss from hidden states and the LM-head weight, never the [N, V] logits.

    out = fused_loss(hidden, lm_head.weight, labels, build_objective("emo", cost=cost))   # LossOutput
    out.loss.backward()        # == objective(hidden @ W.T, labels).loss.backward(), value and gradients

Why: with V = 32000 the plain EMO path holds several N x V float32 tensors (logits, probabilities,
products). Here the N target tokens are walked in chunks of `chunk_size`; for each chunk the logits,
softmax, CE, DEMD *and their gradients* w.r.t. the hidden states and the LM-head weight are computed
inside the forward pass (a `torch.autograd.Function`, as Liger-Kernel's fused linear cross-entropy
does), so only two chunk x V float32 buffers are ever alive. The backward just scales the saved
gradients by the incoming one.

The algebra, per token with q = softmax(z), c_k = ê_k·ê_y (one matmul Ê[y] Êᵀ per chunk), c̄ = <q, c>:
    ce  = (zmax - z_y) + log1p(sum_{k != argmax} exp(z_k - zmax))   (no lse - z_y cancellation)
    demd = 1 - c̄ (+ sg(q_y) with gt_detach),   d ce/dz = q - onehot(y),   d demd/dz = q ⊙ (c̄ - c)
    dL/dz = a (q - onehot(y)) + b q ⊙ (c̄ - c) = q ⊙ (a + b c̄ - b c) - a onehot(y)
with a = dL/d ce_t and b = dL/d demd_t the stop-gradient coefficients of the objective. They are
obtained by running the objective's own mixing helpers (`emotune.objectives.losses`) under autograd on
the per-token vectors (ce, demd) only, so the fused path cannot drift from the reference semantics:
- token weighting (MLE, TaiLr, MixCE, EMO with `weighting: token`): a_t, b_t depend on token t only and
  are known inside the chunk: one pass.
- batch weighting (EMO `weighting: batch`): the ratio needs every token's ce and demd, so a first
  no-grad pass collects them (N floats each) and a second pass builds the gradients.
grad_hidden = g W and grad_W += gᵀ h per chunk; matmuls run in the input dtype (bf16 stays bf16, as
the plain model's lm_head would), everything else in float32 (float64 stays float64), and grad_W is
accumulated across chunks in float32.

Ignored (-100) positions are dropped before the projection. On CUDA `compile=True` runs the chunk's
element-wise work through `torch.compile` (opt-in; the eager CPU path is the reference it must equal).
"""

from __future__ import annotations

import torch
from torch import Tensor

from emotune.objectives.common import IGNORE_INDEX, LossOutput, compute_dtype
from emotune.objectives.cost import CostEmbedding, as_matrix, check_vocab, normalize_rows
from emotune.objectives.losses import EMO_VARIANTS, WEIGHTINGS, mix_mle_demd, mixce_weight, tailr_weight
from emotune.objectives.registry import Objective

# Default chunk: as many tokens as keep one chunk x V float32 buffer at 2^24 floats (64 MB), at least 16.
DEFAULT_CHUNK_FLOATS = 1 << 24


def default_chunk_size(vocab_size: int) -> int:
    return max(16, DEFAULT_CHUNK_FLOATS // max(vocab_size, 1))


# ---------------------------------------------------------------------------------------------------
# The objective on per-token (ce, demd) vectors: the reference's own helpers, nothing re-derived.


def _needs_demd(objective: Objective) -> bool:
    return objective.name == "emo"


def _token_wise(objective: Objective) -> bool:
    return objective.name != "emo" or objective.params.get("weighting", "token") == "token"


def _combine(objective: Objective, ce: Tensor, demd: Tensor | None, q_y: Tensor | None, denom: Tensor):
    """(loss contribution, per-token weight or None, demd as logged) for these tokens; mirrors losses.py."""
    name, p = objective.name, objective.params
    if name == "mle":
        return ce.sum() / denom, None, None
    if name == "tailr":
        w = tailr_weight(torch.exp(-ce), p.get("gamma", 0.1), p.get("min_weight", 0.2))
        return (w * ce).sum() / denom, w, None
    if name == "mixce":
        w = mixce_weight(torch.exp(-ce), p.get("eta", 0.8))
        return (w * ce).sum() / denom, w, None
    if name != "emo":
        raise ValueError(f"fused_loss has no rule for objective {name!r}")
    variant, weighting = p.get("variant", "emo1"), p.get("weighting", "token")
    if variant not in EMO_VARIANTS or weighting not in WEIGHTINGS:
        raise ValueError(f"emo variant/weighting must be in {EMO_VARIANTS}/{WEIGHTINGS}, got {variant!r}/{weighting!r}")
    d = demd + q_y.detach() if p.get("gt_detach", False) else demd
    if weighting == "token":
        terms, ratio = mix_mle_demd(ce, d, variant, p.get("ratio_clamp"))
        return terms.sum() / denom, ratio, d
    loss, ratio = mix_mle_demd(ce.sum() / denom, d.sum() / denom, variant, p.get("ratio_clamp"))
    return loss, None if ratio is None else ratio.expand(ce.shape), d


def _coefficients(objective, ce, demd, q_y, denom):
    """Loss part, logged weight/demd, and a = dL/d ce_t, b = dL/d demd_t (both None-safe)."""
    with torch.enable_grad():
        ce_ = ce.detach().requires_grad_(True)
        d_ = None if demd is None else demd.detach().requires_grad_(True)
        part, weight, d_logged = _combine(objective, ce_, d_, q_y, denom)
        leaves = [ce_] + ([d_] if d_ is not None else [])
        grads = torch.autograd.grad(part, leaves, allow_unused=True) if part.requires_grad else [None] * len(leaves)
    a = torch.zeros_like(ce) if grads[0] is None else grads[0]
    b = None if d_ is None else (torch.zeros_like(ce) if grads[1] is None else grads[1])
    detach = lambda t: None if t is None else t.detach()  # noqa: E731
    return part.detach(), detach(weight), detach(d_logged), a, b


# ---------------------------------------------------------------------------------------------------
# One chunk: logits -> (ce, demd) -> dL/dz, all in place on two chunk x V buffers.


def _softmax_ce(z: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """In place: z (float32 logits) becomes q = softmax(z); returns per-token ce (as common.token_ce_and_probs)."""
    zmax, imax = z.max(dim=-1, keepdim=True)
    z.sub_(zmax)
    z_y = z.gather(-1, y[:, None]).squeeze(-1)
    z.exp_()
    z.scatter_(-1, imax, 0.0)  # sum every term but the (first) max, which is exp(0) = 1: log1p keeps tiny sums
    rest = z.sum(-1)
    z.scatter_(-1, imax, 1.0)
    ce = torch.log1p(rest) - z_y
    z.div_((1.0 + rest)[:, None])
    return ce, z


def _demd(q: Tensor, y: Tensor, e_hat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(cos [c,V] = Ê[y] Êᵀ, c̄ = <q, cos>, demd = 1 - c̄) for one chunk; `cos` is a fresh buffer."""
    cos = e_hat[y] @ e_hat.T
    cbar = torch.bmm(q[:, None, :], cos[:, :, None]).view(-1)  # row-wise dot without a c x V temporary
    return cos, cbar, 1.0 - cbar


def _logit_grad(q: Tensor, y: Tensor, a: Tensor, b: Tensor | None, cos: Tensor | None, cbar: Tensor | None) -> Tensor:
    """dL/dz = q ⊙ (a + b c̄ - b c) - a onehot(y), in place on `cos` (or on `q` without DEMD)."""
    if b is None:
        g = q.mul_(a[:, None])
    else:
        g = cos.mul_(-b[:, None]).add_((a + b * cbar)[:, None]).mul_(q)
    return g.scatter_add_(-1, y[:, None], -a[:, None])


_COMPILED: dict = {}


def _maybe_compiled(fn, use: bool):
    """`torch.compile(fn)` on request for CUDA tensors; the eager function otherwise (CPU: always eager)."""
    if not use:
        return fn
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=True)
    return _COMPILED[fn]


def _run(h, weight, bias, y, e_hat, objective, denom, chunk_size, want, compile_):
    """All chunks. `want` = (grad_h, grad_W, grad_b) flags. Returns (loss, stats, grads)."""
    n, cdt = h.shape[0], compute_dtype(h.dtype)
    use_compile = compile_ and h.is_cuda
    softmax_ce = _maybe_compiled(_softmax_ce, use_compile)
    logit_grad = _maybe_compiled(_logit_grad, use_compile)
    any_grad = any(want)
    grad_h = torch.empty_like(h) if want[0] else None
    grad_w = torch.zeros(weight.shape, dtype=torch.float32 if weight.dtype != torch.float64 else torch.float64,
                         device=weight.device) if want[1] else None
    grad_b = torch.zeros(bias.shape, dtype=grad_w.dtype if grad_w is not None else cdt,
                         device=bias.device) if want[2] else None
    w_mm = weight  # matmuls in the input dtype, as the model's own lm_head
    ce_all = torch.empty(n, dtype=cdt, device=h.device)
    d_all = torch.empty(n, dtype=cdt, device=h.device) if e_hat is not None else None
    qy_all = torch.empty(n, dtype=cdt, device=h.device) if e_hat is not None else None
    token_wise = _token_wise(objective)

    def chunk(s, e):
        z = h[s:e] @ w_mm.T if bias is None else torch.addmm(bias.to(h.dtype), h[s:e], w_mm.T)
        z = z.to(cdt)
        ce, q = softmax_ce(z, y[s:e])
        cos = cbar = None
        if e_hat is not None:
            cos, cbar, d = _demd(q, y[s:e], e_hat)
            d_all[s:e] = d
            qy_all[s:e] = q.gather(-1, y[s:e, None]).squeeze(-1)
        ce_all[s:e] = ce
        return q, cos, cbar

    def backprop(s, e, q, cos, cbar, a, b):
        g = logit_grad(q, y[s:e], a, b, cos, cbar)
        if grad_b is not None:
            grad_b.add_(g.sum(0).to(grad_b.dtype))
        g = g.to(h.dtype)
        if grad_h is not None:
            torch.mm(g, w_mm, out=grad_h[s:e])
        if grad_w is not None:
            if g.dtype == grad_w.dtype:
                grad_w.addmm_(g.T, h[s:e])
            else:  # bf16/fp16 matmul, float32 accumulation across chunks
                grad_w.add_(g.T @ h[s:e])

    loss = torch.zeros((), dtype=cdt, device=h.device)
    weights = []
    starts = range(0, n, chunk_size) if n else [0]  # no target: one empty chunk, so diagnostics match the plain path
    if token_wise:
        for s in starts:
            e = min(s + chunk_size, n)
            q, cos, cbar = chunk(s, e)
            part, weight_t, d_logged, a, b = _coefficients(
                objective, ce_all[s:e], None if d_all is None else d_all[s:e],
                None if qy_all is None else qy_all[s:e], denom)
            loss = loss + part
            if d_logged is not None:
                d_all[s:e] = d_logged
            if weight_t is not None:
                weights.append(weight_t)
            if any_grad:
                backprop(s, e, q, cos, cbar, a, b)
            del q, cos
        weight_all = torch.cat(weights) if weights else None
    else:  # batch weighting: values first, then gradients with the batch-level coefficients
        for s in starts:
            chunk(s, min(s + chunk_size, n))
        loss, weight_all, d_logged, a_all, b_all = _coefficients(objective, ce_all, d_all, qy_all, denom)
        if any_grad:
            for s in starts:
                e = min(s + chunk_size, n)
                q, cos, cbar = chunk(s, e)
                backprop(s, e, q, cos, cbar, a_all[s:e], b_all[s:e])
                del q, cos
        d_all = d_logged  # after the second pass: chunk() writes the raw demd into d_all
    stats = {"ce": ce_all, "demd": d_all, "weight": weight_all}
    grads = (grad_h,
             None if grad_w is None else grad_w.to(weight.dtype),
             None if grad_b is None else grad_b.to(bias.dtype))
    return loss, stats, grads


class _FusedLinearObjective(torch.autograd.Function):
    """Forward computes the loss and its gradients; backward scales them by the incoming gradient."""

    @staticmethod
    def forward(ctx, h, weight, bias, y, e_hat, objective, denom, chunk_size, compile_, stats_out):
        want = (h.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad)
        loss, stats, grads = _run(h, weight, bias, y, e_hat, objective, denom, chunk_size, want, compile_)
        stats_out.update(stats)
        ctx.save_for_backward(*[g if g is not None else torch.empty(0) for g in grads])
        ctx.present = tuple(g is not None for g in grads)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        out = []
        for g, present in zip(ctx.saved_tensors, ctx.present):
            if not present:
                out.append(None)
            elif torch.equal(grad_loss, torch.ones_like(grad_loss)):
                out.append(g)
            else:
                out.append(g * grad_loss.to(g.dtype))
        return (*out, None, None, None, None, None, None, None)


# ---------------------------------------------------------------------------------------------------


def cost_matrix_for(objective: Objective, vocab_size: int, device, live_head: Tensor | None = None) -> Tensor | None:
    """Ê for the fused loss. An adaptive cost normalises `live_head` when given (the already-gathered
    head weight under ZeRO-3: gathering it again inside the head's forward would release it)."""
    if not objective.needs_cost:
        return None
    cost = objective.cost
    if isinstance(cost, CostEmbedding) and cost.source == "adaptive" and live_head is not None:
        e_hat = normalize_rows(live_head, cost.eps).to(device)
        check_vocab(e_hat.shape[0], vocab_size)
        return e_hat
    return as_matrix(cost, vocab_size, device)


def fused_loss(hidden: Tensor, weight: Tensor, labels: Tensor, objective: Objective, chunk_size: int | None = None,
               num_items_in_batch=None, bias: Tensor | None = None, ignore_index: int = IGNORE_INDEX,
               live_head: Tensor | None = None, compile: bool = False) -> LossOutput:
    """`objective(hidden @ weight.T + bias, labels)` without the [N, V] logits; same value, gradients, diagnostics.

    - `hidden [B,T,H]` with `labels [B,T]` (HF convention: unshifted, shifted here), or `hidden [N,H]` with
      `labels [N]` already aligned (row i predicts labels[i]). `-100` rows are dropped before the projection.
    - `weight [V,H]` is the LM-head weight (for tied embeddings, the input embedding); `bias [V]` optional.
    - `chunk_size`: tokens per chunk (default: 2^24 / V). Peak extra memory ~ 2 x chunk x V float32.
    - `live_head`: the weight an adaptive cost is read from (default: the cost embedding's own).
    - `compile`: on CUDA, run the element-wise chunk work through torch.compile (ignored on CPU).
    """
    if weight.dim() != 2:
        raise ValueError(f"lm-head weight must be [V, H], got {tuple(weight.shape)}")
    if hidden.dim() == 3 and labels.dim() == 2 and hidden.shape[:2] == labels.shape:
        h, y = hidden[:, :-1, :], labels[:, 1:]
    elif hidden.dim() == 2 and labels.dim() == 1 and hidden.shape[0] == labels.shape[0]:
        h, y = hidden, labels
    else:
        raise ValueError(f"expected hidden [B,T,H] with labels [B,T] or hidden [N,H] with labels [N], "
                         f"got {tuple(hidden.shape)} and {tuple(labels.shape)}")
    vocab, width = weight.shape
    if h.shape[-1] != width:
        raise ValueError(f"hidden size {h.shape[-1]} does not match the lm-head weight {tuple(weight.shape)}")
    keep = y != ignore_index
    h, y = h[keep], y[keep]
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= vocab):
        raise ValueError(f"label ids must lie in [0, {vocab}) or be {ignore_index}; got {int(y.min())}..{int(y.max())}")
    if h.dtype != weight.dtype:
        h = h.to(weight.dtype)
    cdt = compute_dtype(weight.dtype)
    e_hat = cost_matrix_for(objective, vocab, weight.device, live_head)
    e_hat = None if e_hat is None else e_hat.to(device=h.device, dtype=cdt)
    n = y.numel()
    denom = torch.as_tensor(float(n) if num_items_in_batch is None else num_items_in_batch,
                            dtype=cdt, device=h.device).clamp_min(1.0)
    chunk = int(chunk_size or default_chunk_size(vocab))
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    stats: dict = {}
    needs_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad
                                              or (bias is not None and bias.requires_grad))
    if needs_grad:
        loss = _FusedLinearObjective.apply(h, weight, bias, y, e_hat, objective, denom, chunk, compile, stats)
    else:
        with torch.no_grad():
            loss, stats, _ = _run(h, weight, bias, y, e_hat, objective, denom, chunk, (False, False, False), compile)
    return _output(loss, stats, n, h.device)


def _output(loss: Tensor, stats: dict, n: int, device) -> LossOutput:
    """Diagnostics exactly as common.make_output: plain means over the N local target tokens."""
    count = max(n, 1)
    mean = lambda t: None if t is None else t.sum() / count  # noqa: E731
    return LossOutput(loss=loss, ce=mean(stats["ce"]), n_tokens=torch.tensor(n, device=device),
                      demd=mean(stats["demd"]), weight=mean(stats["weight"]))
