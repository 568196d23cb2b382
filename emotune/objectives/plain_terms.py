"""The plain path's autograd function: per-token (ce, demd, q_y) of the logit rows that predict a target, and
their gradient, from the kernel in `token_terms.py` (docs/objectives.md, *How the plain path computes*).

The forward keeps two floats per row (the row max and the softmax normaliser) and, for DEMD, k = C[:, y] for
every target; the backward recomputes q from the logits autograd already holds. No copy of the full logits
is made for the mask (rows are read by index, chunk by chunk), no probabilities are built for an objective
that does not use them, and ignored rows get an exact zero. The cost columns of all targets come from one
matmul (the cost embedding is read once); every pass over V after it walks a few cache-sized rows at a time,
so each k row leaves memory once per pass direction. Autocast is off: the math is float32 (float64 stays
float64) whatever the context.
"""

from __future__ import annotations

import torch
from torch import Tensor

from emotune.objectives.token_terms import (
    compute_dtype,
    cost_columns,
    expected_cost,
    logit_grad,
    no_autocast,
    row_blocks,
    softmax_again,
    softmax_ce,
    unused_ranges,
)

# Text repeats its tokens: a batch of 8k tokens of English has a few thousand distinct ones. Below this share of
# distinct targets the plain path computes C[:, y] once per distinct target (fewer FLOPs); above it the
# in-place layout wins, whose buffer doubles as the gradient (the table needs a gradient allocated beside it).
SHARED_COLUMNS_BELOW = 0.75


def shared_columns(y: Tensor, e_hat: Tensor, k_self: Tensor) -> tuple[Tensor, Tensor] | None:
    """`(table, col)`: k of target t = `table[col[t]]`, one row of C[:, y] per distinct target (`1 - cos` taken),
    when fewer than SHARED_COLUMNS_BELOW of the targets differ; else None."""
    ids, col = torch.unique(y, return_inverse=True)
    if ids.numel() >= SHARED_COLUMNS_BELOW * y.numel():
        return None
    k_ids = torch.empty(ids.numel(), dtype=k_self.dtype, device=k_self.device).scatter_(0, col, k_self)
    return cost_columns(torch.mm(e_hat[ids], e_hat.T), ids, k_ids), col


def cosines_in_place(flat: Tensor, rows: Tensor, y: Tensor, e_hat: Tensor, cdt: torch.dtype) -> Tensor:
    """ê_y·ê_i of every target, written at the target's own row of a `[B*T, V]` compute-dtype buffer (one matmul
    per run of consecutive rows: Ê is read once per run). The backward overwrites each row with its gradient
    after reading it, so the buffer is the gradient too: no second `[B*T, V]` allocation."""
    work = torch.empty(flat.shape, dtype=cdt, device=flat.device)
    for s, e, r in row_blocks(rows, max(rows.numel(), 1)):
        torch.mm(e_hat[y[s:e]], e_hat.T, out=work[r: r + e - s])
    return work


def reuse_for_gradient(flat: Tensor, rows: Tensor, cdt: torch.dtype) -> bool:
    """Whether the cosines go to the gradient's own buffer: always when the gradient is in the compute dtype;
    for bf16/fp16 logits (its 2-byte gradient fits in the first half of the float32 buffer) only while that
    buffer is no larger than the separate table and gradient would be (at most half the rows masked)."""
    if flat.dtype == cdt:
        return True
    return flat.dtype.itemsize * 2 == torch.finfo(cdt).bits // 8 and flat.shape[0] <= 2 * rows.numel()


def gradient_view(work: Tensor, dtype: torch.dtype) -> Tensor:
    """The `[B*T, V]` gradient in `dtype` over the start of `work`'s memory. Row r of a 2-byte gradient lies in
    the bytes of work rows <= r, so writing rows in increasing order never touches a cost row not yet read."""
    if work.dtype == dtype:
        return work
    return work.view(-1).view(dtype)[: work.numel()].view(work.shape)


class PlainTerms(torch.autograd.Function):
    """(ce [N], demd [N] or empty, q_y [N]) for the logit rows `flat[rows]` (k_self [N]: C[y, y] per target);
    backward -> d/d flat.

    The backward needs k = C[:, y] of every target (keeping it costs floats, recomputing it a matmul). It is
    kept as a table with one row per distinct target (`shared_columns`), or else at the targets' own rows of
    a `[B*T, V]` buffer that the backward turns into the gradient row by row (`cosines_in_place`), or, for
    bf16/fp16 logits with most rows masked, as one table row per target."""

    @staticmethod
    def forward(ctx, flat, rows, y, e_hat, k_self, chunk):
        with no_autocast(flat.device):
            cdt = compute_dtype(flat.dtype)
            n, vocab = rows.numel(), flat.shape[-1]
            blocks = row_blocks(rows, chunk)
            ce = torch.empty(n, dtype=cdt, device=flat.device)
            zmax = torch.empty_like(ce)
            norm = torch.empty_like(ce)
            has_demd = e_hat is not None
            demd = torch.empty(n if has_demd else 0, dtype=cdt, device=flat.device)
            q_y = torch.empty_like(demd)
            table = col = work = None
            if has_demd:
                shared = shared_columns(y, e_hat, k_self)
                if shared is not None:
                    table, col = shared
                elif reuse_for_gradient(flat, rows, cdt):
                    work = cosines_in_place(flat, rows, y, e_hat, cdt)
                else:
                    table = cost_columns(torch.mm(e_hat[y], e_hat.T), y, k_self)
            buf = torch.empty(min(chunk, max(n, 1)), vocab, dtype=cdt, device=flat.device)
            kbuf = torch.empty_like(buf) if col is not None else None
            for s, e, r in blocks:
                z = buf[: e - s]
                z.copy_(flat[r: r + e - s])
                ce[s:e], ez, zmax[s:e], norm[s:e] = softmax_ce(z, y[s:e])
                if has_demd:
                    if work is not None:  # `1 - cos` now, while the rows are in cache
                        k = cost_columns(work[r: r + e - s], y[s:e], k_self[s:e])
                    else:
                        k = _table_rows(table, col, s, e, kbuf)
                    demd[s:e] = expected_cost(ez, norm[s:e], k)
                    q_y[s:e] = ez.gather(-1, y[s:e, None]).squeeze(-1) / norm[s:e]
        none = torch.empty(0, device=flat.device)
        ctx.save_for_backward(flat, rows, y, zmax, norm, demd, *(none if t is None else t for t in (table, col, e_hat, k_self)))
        # `work` becomes the gradient in place, so it is not a saved tensor (autograd would refuse it as modified);
        # the backward drops this reference, so the buffer lives on only as the gradient it returns.
        ctx.work, ctx.in_place, ctx.has_col = work, work is not None, col is not None
        ctx.blocks, ctx.chunk, ctx.has_demd = blocks, chunk, has_demd
        ctx.mark_non_differentiable(q_y)
        return ce, demd, q_y

    @staticmethod
    def backward(ctx, g_ce, g_demd, _g_qy):
        flat, rows, y, zmax, norm, demd, table, col, e_hat, k_self = ctx.saved_tensors
        col = col if ctx.has_col else None
        with no_autocast(flat.device):
            cdt = compute_dtype(flat.dtype)
            work, ctx.work = ctx.work, None
            if ctx.in_place and work is None:
                # a retained graph's second backward: the first one turned the cost rows into its gradient
                work = cosines_in_place(flat, rows, y, e_hat, cdt)
                for s, e, r in ctx.blocks:
                    cost_columns(work[r: r + e - s], y[s:e], k_self[s:e])
            grad = gradient_view(work, flat.dtype) if ctx.in_place else torch.empty_like(flat)
            a_all = torch.zeros_like(zmax) if g_ce is None else g_ce.to(cdt)
            b_all = None if not ctx.has_demd else (torch.zeros_like(zmax) if g_demd is None else g_demd.to(cdt))
            vocab = flat.shape[-1]
            buf = torch.empty(min(ctx.chunk, max(zmax.numel(), 1)), vocab, dtype=cdt, device=flat.device)
            direct = grad.dtype == cdt  # write the gradient straight into its rows; else one cast per block
            tmp = None if direct or not ctx.has_demd else torch.empty_like(buf)  # low-precision logits
            kbuf = torch.empty_like(buf) if col is not None else None
            # Rows in increasing order, the masked ones zeroed on the way: a 2-byte gradient written over the
            # float32 cost rows only ever lands on rows already read (see gradient_view).
            steps = [(a, (a, b), None) for a, b in unused_ranges(ctx.blocks, flat.shape[0])]
            steps += [(r, None, (s, e, r)) for s, e, r in ctx.blocks]
            for _, masked, block in sorted(steps, key=lambda t: t[0]):
                if masked is not None:
                    grad[masked[0]: masked[1]].zero_()
                    continue
                s, e, r = block
                z = buf[: e - s]
                z.copy_(flat[r: r + e - s])
                ez = softmax_again(z, zmax[s:e])
                rows_out = grad[r: r + e - s]
                k = None
                if ctx.has_demd:  # a kept table is read, never modified (a retained graph may need it again)
                    k = work[r: r + e - s] if ctx.in_place else _table_rows(table, col, s, e, kbuf)
                out = rows_out if direct else (tmp[: e - s] if ctx.has_demd else None)
                g = logit_grad(ez, norm[s:e], y[s:e], a_all[s:e], None if b_all is None else b_all[s:e],
                               k, demd[s:e] if ctx.has_demd else None, out=out)
                if not direct:
                    rows_out.copy_(g)
        return grad, None, None, None, None, None


def _table_rows(table: Tensor, col: Tensor | None, s: int, e: int, kbuf: Tensor | None) -> Tensor:
    """k of targets s:e from a kept table: gathered into the reused buffer (shared columns), or a slice."""
    return table[s:e] if col is None else torch.index_select(table, 0, col[s:e], out=kbuf[: e - s])
