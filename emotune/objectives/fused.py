"""Fused linear + objective: every loss from hidden states and the LM-head weight, never the [N, V] logits.

    out = fused_loss(hidden, lm_head.weight, labels, build_objective("emo", cost=cost))   # LossOutput
    out.loss.backward()        # == objective(hidden @ W.T, labels).loss.backward(), value and gradients

Why: with V = 32000 the plain EMO path holds several N x V float32 tensors (logits, probabilities,
products). Here the N target tokens are walked in chunks of `chunk_size`; for each chunk the logits,
softmax, CE, DEMD *and their gradients* w.r.t. the hidden states and the LM-head weight are computed
inside the forward pass (a `torch.autograd.Function`, as Liger-Kernel's fused linear cross-entropy
does), so only two chunk x V float32 buffers are ever alive. The backward just scales the saved
gradients by the incoming one.

The algebra, per token with q = softmax(z), k_i = C[i, y] = 1 - ê_i·ê_y (one matmul Ê[y] Êᵀ per chunk):
    ce   = (zmax - z_y) + log1p(sum_{i != argmax} exp(z_i - zmax))   (no lse - z_y cancellation)
    demd = sum_{i != y} q_i k_i + q_y k_yy, k_yy exact (0)            (no 1 - c̄ cancellation)
    dL/dz = a (q - onehot(y)) + b q ⊙ (k - demd)
with a = dL/d ce_t and b = dL/d demd_t the stop-gradient coefficients of the objective. The chunk kernel
is `emotune.objectives.token_terms`, the very functions the plain path runs, and a, b are obtained by
running the objective's own combine rule (the registry's entry, `emotune.objectives.losses`) under autograd on the per-token
vectors (ce, demd) only, so the fused path cannot drift from the reference semantics:
- token-wise rules (the entry's `token_wise`: MLE, TaiLr, MixCE, EMO with `weighting: token`): a_t, b_t depend on token t only and
  are known inside the chunk: one pass.
- batch weighting (EMO `weighting: batch`): the ratio needs every token's ce and demd, so a first
  no-grad pass collects them (N floats each) and a second pass builds the gradients.
grad_hidden = g W and grad_W += gᵀ h per chunk; the head's matmuls run in its own dtype (bf16 stays bf16,
as the plain model's lm_head would; under autocast, autocast's dtype), everything else in float32 with
autocast off (float64 stays float64). Every saved gradient is float32: the backward multiplies it by the
incoming gradient (loss scale, 1/accumulation) in float32 and casts once. LoRA adapters on the head are
applied as `h Wᵀ + s (h Aᵀ) Bᵀ` and get their own gradients.

The chunk walk's state and per-chunk work (logits, kernel calls, gradient matmuls) is `fused_chunks.Chunks`;
this module drives it. Ignored (-100) positions are dropped before the projection. On CUDA `compile=True` runs the chunk's
element-wise work through `torch.compile` (opt-in; the eager CPU path is the reference it must equal).
"""

from __future__ import annotations

import torch
from torch import Tensor

from emotune.objectives.common import IGNORE_INDEX, LossOutput, compute_dtype
from emotune.objectives.cost import CostEmbedding, as_matrix, check_vocab, normalize_rows
from emotune.objectives.fused_chunks import Chunks
from emotune.objectives.fused_dense import DenseChunks, teacher_rows
from emotune.objectives.registry import Objective
from emotune.objectives.token_terms import no_autocast, self_cost

# Default chunk: as many tokens as keep one chunk x V float32 buffer at 2^24 floats (64 MB), at least 16.
DEFAULT_CHUNK_FLOATS = 1 << 24


def default_chunk_size(vocab_size: int) -> int:
    return max(16, DEFAULT_CHUNK_FLOATS // max(vocab_size, 1))


# ---------------------------------------------------------------------------------------------------
# The objective on per-token (ce, demd) vectors: the reference's own helpers, nothing re-derived.


def _combine(objective: Objective, ce: Tensor, demd: Tensor | None, q_y: Tensor | None, denom: Tensor):
    """(loss contribution, per-token weight or None, demd as logged) for these tokens: the registry's rule of
    the objective, the one the plain path runs, with the fused loss's divisor as the token mean."""
    return objective.combine(ce, demd, q_y, lambda t: t.sum() / denom)


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
# All chunks: logits -> (ce, demd) -> dL/dz -> gradients of h, W, bias and LoRA factors.


def _run(h, weight, bias, lora, y, e_hat, k_self, objective, denom, chunk_size, want, compile_, mm_dtype, teacher=None):
    """All chunks. `lora` = [(A [r,H], B [V,r], scale)]; `want` = grad flags for (h, W, bias, A1, B1, ...);
    `teacher` = (h_t [N,H_t], W_t [V,H_t], bias_t) for a teacher target (its logits are made chunk by chunk).
    Returns (loss, stats, grads); every gradient is accumulated and returned in float32 (float64 stays)."""
    c = (DenseChunks(h, weight, bias, lora, y, e_hat, k_self, chunk_size, want, compile_, mm_dtype, objective, teacher)
         if objective.dense else Chunks(h, weight, bias, lora, y, e_hat, k_self, chunk_size, want, compile_, mm_dtype))
    n, ce_all, d_all, qy_all, any_grad = c.n, c.lik_all, c.d_all, c.qy_all, any(want)
    loss = torch.zeros((), dtype=c.cdt, device=h.device)
    weights = []
    starts = range(0, n, chunk_size) if n else [0]  # no target: one empty chunk, so diagnostics match the plain path
    if objective.token_wise:
        d_logged_all = None if d_all is None else torch.empty_like(d_all)
        for s in starts:
            e = min(s + chunk_size, n)
            q, k = c.chunk(s, e)
            part, weight_t, d_logged, a, b = _coefficients(
                objective, ce_all[s:e], None if d_all is None else d_all[s:e],
                None if qy_all is None else qy_all[s:e], denom)
            loss = loss + part
            if d_logged is not None:
                d_logged_all[s:e] = d_logged
            if weight_t is not None:
                weights.append(weight_t)
            if any_grad:
                c.backprop(s, e, q, k, a, b)
            del q, k
        weight_all = torch.cat(weights) if weights else None
        d_out = d_logged_all
    else:  # batch weighting: values first, then gradients with the batch-level coefficients
        for s in starts:
            c.chunk(s, min(s + chunk_size, n))
        loss, weight_all, d_out, a_all, b_all = _coefficients(objective, ce_all, d_all, qy_all, denom)
        if any_grad:
            for s in starts:
                e = min(s + chunk_size, n)
                q, k = c.chunk(s, e)
                c.backprop(s, e, q, k, a_all[s:e], b_all[s:e])
                del q, k
    stats = {"ce": c.ce_all, "demd": d_out, "weight": weight_all}
    return loss, stats, (c.grad_h, c.grad_w, c.grad_b, *c.grad_lora)


class _FusedLinearObjective(torch.autograd.Function):
    """Forward computes the loss and its gradients (float32); backward scales them by the incoming gradient
    in float32 and casts once to each input's dtype. (Scaling in the input dtype overflows: fp16's loss
    scale 65536 is inf in fp16; bf16 rounds an accumulation factor 1/3 by 0.18%.)"""

    @staticmethod
    def forward(ctx, h, weight, bias, y, e_hat, k_self, objective, denom, chunk_size, compile_, mm_dtype, scales,
                stats_out, teacher, *lora_tensors):
        lora = [(lora_tensors[2 * i], lora_tensors[2 * i + 1], sc) for i, sc in enumerate(scales)]
        want = (h.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad,
                *[t.requires_grad for t in lora_tensors])
        with no_autocast(h.device):
            loss, stats, grads = _run(h, weight, bias, lora, y, e_hat, k_self, objective, denom, chunk_size, want,
                                      compile_, mm_dtype, teacher)
        stats_out.update(stats)
        inputs = (h, weight, bias, *lora_tensors)
        ctx.save_for_backward(*[g if g is not None else torch.empty(0) for g in grads])
        ctx.present = tuple(g is not None for g in grads)
        ctx.dtypes = tuple(None if t is None else t.dtype for t in inputs)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        out = []
        with no_autocast(grad_loss.device):
            unit = bool(torch.equal(grad_loss, torch.ones_like(grad_loss)))
            for g, present, dtype in zip(ctx.saved_tensors, ctx.present, ctx.dtypes):
                if not present:
                    out.append(None)
                else:
                    out.append((g if unit else g * grad_loss.to(g.dtype)).to(dtype))
        h_grad, w_grad, b_grad, *lora_grads = out
        return (h_grad, w_grad, b_grad, *([None] * 11), *lora_grads)


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


def _matmul_dtype(weight: Tensor) -> torch.dtype:
    """The head's matmul dtype: the weight's, or ambient autocast's for a float32 weight (what the model's
    own lm_head would do under autocast). Only the head's matmuls: the loss math is float32 regardless."""
    kind = weight.device.type
    if weight.dtype == torch.float32 and kind in ("cpu", "cuda") and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return weight.dtype


def _target_rows(hidden: Tensor, weight: Tensor, labels: Tensor, lora: list, ignore_index: int) -> tuple[Tensor, Tensor]:
    """(h [N,H], y [N]): the hidden rows that predict a target and their labels, shapes and ids checked."""
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
    for a_, b_, _ in lora:
        if a_.dim() != 2 or b_.dim() != 2 or a_.shape[1] != width or b_.shape != (vocab, a_.shape[0]):
            raise ValueError(f"LoRA factors must be A [r,{width}] and B [{vocab},r], got {tuple(a_.shape)} and {tuple(b_.shape)}")
    keep = y != ignore_index
    h, y = h[keep], y[keep]
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= vocab):
        raise ValueError(f"label ids must lie in [0, {vocab}) or be {ignore_index}; got {int(y.min())}..{int(y.max())}")
    return h, y


def fused_loss(hidden: Tensor, weight: Tensor, labels: Tensor, objective: Objective, chunk_size: int | None = None,
               num_items_in_batch=None, bias: Tensor | None = None, ignore_index: int = IGNORE_INDEX,
               live_head: Tensor | None = None, compile: bool = False,
               lora: list[tuple[Tensor, Tensor, float]] | None = None,
               teacher: tuple[Tensor, Tensor, Tensor | None] | None = None) -> LossOutput:
    """`objective(hidden @ weight.T + bias, labels)` without the [N, V] logits; same value, gradients, diagnostics.

    - `hidden [B,T,H]` with `labels [B,T]` (HF convention: unshifted, shifted here), or `hidden [N,H]` with
      `labels [N]` already aligned (row i predicts labels[i]). `-100` rows are dropped before the projection.
    - `weight [V,H]` is the LM-head weight (for tied embeddings, the input embedding); `bias [V]` optional.
    - `lora`: LoRA adapters on the head, `[(A [r,H], B [V,r], scale)]`: logits `h Wᵀ + scale (h Aᵀ) Bᵀ`, the
      adapter term computed on its own (folding `scale B A` into a bf16 W would round small deltas away).
    - `chunk_size`: tokens per chunk (default: 2^24 / V). Peak extra memory ~ 2 x chunk x V float32.
    - `live_head`: the weight an adaptive cost is read from (default: the cost embedding's own).
    - `compile`: on CUDA, run the element-wise chunk work through torch.compile (ignored on CPU).
    - `teacher`: `(hidden_t, weight_t, bias_t)` for `target: teacher`: the teacher's last hidden states (shaped like
      `hidden`, any width) and LM head; its logits are made chunk by chunk beside the student's, never [N, V].
    """
    lora = list(lora or [])
    h, y = _target_rows(hidden, weight, labels, lora, ignore_index)
    teacher = teacher_rows(teacher, hidden, labels, weight.shape[0], ignore_index) if objective.needs_teacher else None
    vocab, mm_dtype = weight.shape[0], _matmul_dtype(weight)
    if h.dtype != weight.dtype:
        h = h.to(weight.dtype)
    cdt = compute_dtype(weight.dtype)
    with no_autocast(weight.device):
        e_hat = cost_matrix_for(objective, vocab, weight.device, live_head)
        e_hat = None if e_hat is None else e_hat.to(device=h.device, dtype=cdt)
        k_self = None if e_hat is None else self_cost(e_hat[y])  # C[y, y] per target
    n = y.numel()
    # The divisor: the local count clamped to >= 1, or the caller's num_items_in_batch as given (a step with
    # fewer targets than ranks x accumulation steps has a divisor below 1); only <= 0 is replaced by 1.
    if num_items_in_batch is None:
        denom = torch.tensor(float(max(n, 1)), dtype=cdt, device=h.device)
    else:
        denom = torch.as_tensor(num_items_in_batch, dtype=cdt, device=h.device)
        denom = torch.where(denom > 0, denom, torch.ones_like(denom))
    chunk = int(chunk_size or default_chunk_size(vocab))
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    stats: dict = {}
    lora_tensors = [t for a_, b_, _ in lora for t in (a_, b_)]
    scales = [float(sc) for _, _, sc in lora]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (h, weight, bias, *lora_tensors) if t is not None)
    if needs_grad:
        loss = _FusedLinearObjective.apply(h, weight, bias, y, e_hat, k_self, objective, denom, chunk, compile, mm_dtype,
                                           scales, stats, teacher, *lora_tensors)
    else:
        with torch.no_grad(), no_autocast(h.device):
            loss, stats, _ = _run(h, weight, bias, [(a_, b_, sc) for a_, b_, sc in lora], y, e_hat, k_self, objective,
                                  denom, chunk, (False,) * (3 + len(lora_tensors)), compile, mm_dtype, teacher)
    return _output(loss, stats, n, h.device)


def _output(loss: Tensor, stats: dict, n: int, device) -> LossOutput:
    """Diagnostics exactly as common.make_output: plain means over the N local target tokens."""
    count = max(n, 1)
    mean = lambda t: None if t is None else t.sum() / count  # noqa: E731
    return LossOutput(loss=loss, ce=mean(stats["ce"]), n_tokens=torch.tensor(n, device=device),
                      demd=mean(stats["demd"]), weight=mean(stats["weight"]))
