"""The fused loss's walk over chunks of target rows (docs/fused-loss.md, "How"): one chunk's logits -> (ce, demd),
and its logit gradient -> the gradients of h, W, bias and the LoRA factors.

`fused.py` drives the walk (the objective's coefficients between the two halves); `fused_dense.py` subclasses
`Chunks` for a dense target. Both import this module, which imports neither.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from emotune.objectives.common import compute_dtype
from emotune.objectives.token_terms import cost_columns, demd_cosines, logit_grad, scaled_cosine_grad, softmax_parts

_COMPILED: dict = {}


def _maybe_compiled(fn, use: bool):
    """`torch.compile(fn)` on request for CUDA tensors; the eager function otherwise (CPU: always eager)."""
    if not use:
        return fn
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=True)
    return _COMPILED[fn]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class Chunks:
    """The walk over chunks of target rows: one chunk's logits -> (ce, demd) (`chunk`), and its logit gradient ->
    the gradients of h, W, bias and the LoRA factors (`backprop`). Holds what every chunk shares: the operands in
    the matmul dtype, one reused logits buffer and cost buffer, the per-token results and the accumulators."""

    def __init__(self, h, weight, bias, lora, y, e_hat, k_self, chunk_size, want, compile_, mm_dtype):
        n, cdt = h.shape[0], compute_dtype(h.dtype)
        self.n, self.cdt, self.y, self.e_hat, self.k_self, self.mm_dtype = n, cdt, y, e_hat, k_self, mm_dtype
        use_compile = compile_ and h.is_cuda
        self.softmax_parts = _maybe_compiled(softmax_parts, use_compile)
        self.logit_grad = _maybe_compiled(logit_grad, use_compile)
        # DEMD's logit gradient with its row factor moved to the c x H side of the matmuls (scaled_cosine_grad):
        # only where those matmuls run in the compute dtype (a bf16/fp16 g needs its own scale) and eagerly
        self.fold = mm_dtype == cdt and not use_compile
        acc = lambda t, flag: torch.zeros(t.shape, dtype=_acc_dtype(t.dtype), device=t.device) if flag else None  # noqa: E731
        self.grad_h, self.grad_w = acc(h, want[0]), acc(weight, want[1])
        self.grad_b = acc(bias, want[2]) if bias is not None else None
        self.grad_lora = [acc(t, f) for (a_, b_, _), f2 in zip(lora, zip(want[3::2], want[4::2]))
                          for t, f in ((a_, f2[0]), (b_, f2[1]))]
        # matmuls in the head's own dtype (bf16 stays bf16, as the model's lm_head would; under autocast, its dtype)
        self.h_mm, self.w_mm = h.to(mm_dtype), weight.to(mm_dtype)
        self.lora_mm = [(a_.to(mm_dtype), b_.to(mm_dtype), sc) for a_, b_, sc in lora]
        self.ce_all = torch.empty(n, dtype=cdt, device=h.device)
        # d_all: the kernel's <q, k>, which the gradient needs (gt_detach only shifts the logged value)
        self.d_all = torch.empty(n, dtype=cdt, device=h.device) if e_hat is not None else None
        self.qy_all = torch.empty(n, dtype=cdt, device=h.device) if e_hat is not None else None
        self.lik_all = self.ce_all  # the term the rule mixes with the DEMD: the CE for a one-hot target

        # One logits buffer and one cost buffer, reused by every chunk: a fresh chunk x V allocation per chunk is
        # a fresh mapping (page faults, zeroing) on the CPU.
        rows = min(chunk_size, max(n, 1))
        self.zbuf = torch.empty(rows, weight.shape[0], dtype=cdt, device=h.device)
        self.kbuf = torch.empty_like(self.zbuf) if e_hat is not None else None
        self.has_bias = bias is not None
        self.bias_mm = None if bias is None else bias.to(mm_dtype)

        # fp16's range is narrow: an unscaled per-token gradient (~q/N) is subnormal in fp16. So for fp16 matmuls
        # each chunk's gradient is scaled by a power of two (exact) that puts it near 1 without letting any
        # product overflow, and unscaled in float32 after the matmul. bf16 has float32's range: factor 1.
        # (grad_W in fp16 is a float32 product: it sums over chunks, and fp16 partial sums would each round.)
        self.prescale = prescale = mm_dtype == torch.float16
        self.amax_h = float(self.h_mm.abs().amax()) if prescale and n else 1.0
        self.amax_m = (max([float(self.w_mm.abs().amax())] + [float(b_.abs().amax()) for _, b_, _ in self.lora_mm])
                       if prescale else 1.0)

    def logits(self, s, e) -> Tensor:
        """Rows s:e: the head's logits (compute dtype) in the reused buffer."""
        hs = self.h_mm[s:e]
        z = self.zbuf[: e - s]
        if self.mm_dtype == self.cdt:
            torch.mm(hs, self.w_mm.T, out=z) if not self.has_bias else torch.addmm(self.bias_mm, hs, self.w_mm.T, out=z)
        else:
            z.copy_(hs @ self.w_mm.T if not self.has_bias else torch.addmm(self.bias_mm, hs, self.w_mm.T))
        for a_, b_, sc in self.lora_mm:  # h W + s (h A) B: the adapter's contribution is never rounded into W
            z.add_(((hs @ a_.T) @ b_.T).to(self.cdt), alpha=sc)
        return z

    def chunk(self, s, e):
        """Rows s:e: logits into the buffer, ce (and demd, q_y) stored; returns ((exp(z - zmax), norm, e_y), cos):
        the chunk's cosines ê_y·ê_i (target entry 0) stand in for its cost columns k = 1 - cos (`demd_cosines`)."""
        z, y = self.logits(s, e), self.y
        ce, ez, _, norm, off, e_y = self.softmax_parts(z, y[s:e])  # ez = exp(z - zmax): q = ez / norm, never formed
        cos = None
        if self.e_hat is not None:
            cos, d = demd_cosines(ez, norm, off, e_y, y[s:e], self.e_hat, self.k_self[s:e], out=self.kbuf[: e - s])
            self.d_all[s:e] = d
            self.qy_all[s:e] = e_y / norm
        self.ce_all[s:e] = ce
        return (ez, norm, e_y), cos

    def factor(self, g) -> float:
        """The fp16 prescale of a chunk's logit gradient (a power of two; 1 unless the matmuls run in fp16)."""
        if not self.prescale:
            return 1.0
        ag = g.abs()
        amax, rowsum, colsum = float(ag.amax()), float(ag.sum(-1).amax()), float(ag.sum(0).amax())
        if amax == 0.0:
            return 1.0
        limit = 2.0 ** 14  # a quarter of fp16's max: room for the matmuls' rounding
        f = min(1.0 / amax, limit / max(rowsum * self.amax_m, 1e-30), limit / max(colsum * self.amax_h, 1e-30))
        return 2.0 ** math.floor(math.log2(f))

    def backprop(self, s, e, q, cos, a, b):
        """Rows s:e with coefficients a = dL/d ce, b = dL/d demd: add their share to every gradient."""
        ez, norm, e_y = q
        y = self.y[s:e]
        if b is None:
            self.apply(s, e, self.logit_grad(ez, norm, y, a, None, None, None))
            return
        d, k_y = self.d_all[s:e], self.k_self[s:e]
        if self.fold:
            self.apply(s, e, *scaled_cosine_grad(ez, norm, y, a, b, cos, d, e_y, k_y))
        else:  # the matmuls' own dtype or the compiled kernel: the cost columns k = 1 - cos, then logit_grad's form
            self.apply(s, e, self.logit_grad(ez, norm, y, a, b, cost_columns(cos, y, k_y), d))

    def apply(self, s, e, g, rows=None):
        """The chunk's logit gradient diag(rows) g [c, V] (compute dtype; `rows` None: 1) -> its share of the
        gradients of h, W, bias, LoRA. A row factor is applied on the c x H side: (rows ⊙ g) W = rows ⊙ (g W) and
        (rows ⊙ g)ᵀ h = gᵀ (rows ⊙ h)."""
        grad_h, grad_w, grad_b, grad_lora = self.grad_h, self.grad_w, self.grad_b, self.grad_lora
        if grad_b is not None:
            grad_b.add_((g.sum(0) if rows is None else rows @ g).to(grad_b.dtype))
        g32, f = g, self.factor(g)
        g = (g * f if f != 1.0 else g).to(self.mm_dtype)
        inv = 1.0 / f
        hs = self.h_mm[s:e] if rows is None else self.h_mm[s:e] * rows[:, None]
        if grad_h is not None:
            grad_h[s:e] = g @ self.w_mm
            if rows is not None:
                grad_h[s:e] *= rows[:, None]
            if inv != 1.0:
                grad_h[s:e] *= inv
        if grad_w is not None:
            if g.dtype == grad_w.dtype:
                grad_w.addmm_(g.T, hs)
            elif self.prescale:  # fp16: one fp16 rounding per chunk would add up over the chunks; fp32 product instead
                grad_w.addmm_(g32.T, hs.to(grad_w.dtype))
            else:  # bf16 matmul, float32 accumulation across chunks
                grad_w.add_(g.T @ hs)
        for i, (a_, b_, sc) in enumerate(self.lora_mm):
            u = hs @ a_.T                      # [c, r] (times the row factor, as hs)
            gu = g @ b_ if rows is None else (g @ b_) * rows[:, None]  # dL/du / (sc f)
            if grad_h is not None:
                grad_h[s:e] += (gu @ a_).to(grad_h.dtype) * (sc * inv)
            if grad_lora[2 * i] is not None:
                grad_lora[2 * i].add_(gu.T @ self.h_mm[s:e], alpha=sc * inv)
            if grad_lora[2 * i + 1] is not None:
                grad_lora[2 * i + 1].add_(g.T @ u, alpha=sc * inv)
