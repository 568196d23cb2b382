"""Per-token CE and DEMD of a block of logit rows, and their logit gradient: the one kernel behind both paths.

The plain path (`losses.py`, on materialised logits) and the fused path (`fused.py`, from hidden states)
both walk the target rows in chunks and call these three functions on a chunk x V float32 buffer, so the
two paths share every rounding decision. With q = softmax(z), k_i = C[i, y] = 1 - ê_i·ê_y:

    ce   = (zmax - z_y) + log1p(sum_{i != argmax} exp(z_i - zmax))   no `lse - z_y` cancellation
    demd = sum_{i != y} q_i k_i  (+ q_y k_yy, k_yy exact: 0 for a unit row)   no `1 - c̄` cancellation
    dL/dz = a (q - onehot(y)) + b q ⊙ (k - demd)  with a = dL/d ce_t, b = dL/d demd_t

`1 - c̄` (the textbook form) loses everything in float32 for a confident token: c̄ = 1 - 5e-11 rounds to 1,
demd to ~1e-7 noise of either sign, and EMO-2's weight demd / ce becomes garbage. Summing q_i k_i with the
target's own term taken exactly keeps the relative accuracy of every term.

`PlainTerms` is the plain path's autograd function: its forward keeps two floats per row (the row max and
the softmax normaliser) and, for DEMD, k for every target; the backward recomputes q from the logits autograd
already holds. No copy of the full logits is made for the mask (rows are read by index, chunk by chunk),
no probabilities are built for an objective that does not use them, and ignored rows get an exact zero.
The cost columns C[:, y] of all targets come from one matmul (the cost embedding is read once); every pass
over V after it walks a few cache-sized rows at a time, so each k row leaves memory once per pass direction.
Everything runs with autocast disabled: the math is float32 (float64 stays float64) whatever the context.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor

# Plain path chunk: a few cache-sized rows on CPU (every pass after the first read stays in cache);
# on an accelerator the launch count matters more, so much larger blocks. (The dense-target kernel builds
# its cost product chunk by chunk, and a matmul wants a few hundred rows to run at full speed.)
CPU_CHUNK_FLOATS = 1 << 18
CPU_DEMD_CHUNK_FLOATS = 1 << 23
DEVICE_CHUNK_FLOATS = 1 << 24


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for any model dtype (bf16/fp16/fp32); float64 stays float64 (reference tests)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@contextmanager
def no_autocast(device: torch.device | str):
    """Ambient autocast (HF Trainer / TRL with bf16) would run the DEMD matmul in bf16: switch it off here."""
    kind = torch.device(device).type
    if kind in ("cpu", "cuda", "xpu", "mps", "hpu") and torch.is_autocast_enabled(kind):
        with torch.autocast(device_type=kind, enabled=False):
            yield
    else:
        yield


def plain_chunk_rows(vocab: int, device: torch.device, demd: bool = False) -> int:
    """Rows per block of the passes over V; `demd`: the dense kernel's blocks, which also hold a cost matmul."""
    cpu = torch.device(device).type == "cpu"
    floats = (CPU_DEMD_CHUNK_FLOATS if demd else CPU_CHUNK_FLOATS) if cpu else DEVICE_CHUNK_FLOATS
    return max(1, floats // max(vocab, 1))


def self_cost(e_hat_rows: Tensor) -> Tensor:
    """k_yy = C[y, y] for the given rows of Ê (the targets' rows: [N, H'] -> [N]), exactly: 0 for a unit row
    (a token is at distance 0 from itself), and `1 - |ê|²` for the rows the eps policy shrank (a zero row has
    cost 1 to every token, itself included). Only the targets' rows: the whole [V, H'] would be a pass over Ê."""
    sq = (e_hat_rows * e_hat_rows).sum(-1)
    return torch.where((sq - 1.0).abs() < 1e-4, torch.zeros_like(sq), 1.0 - sq)


def softmax_ce(z: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """In place: float32 logits z become e = exp(z - zmax). Returns (ce, e, zmax, norm); q = e / norm is never
    formed (the division is folded into the per-row coefficients downstream: one pass over c x V fewer)."""
    zmax, imax = z.max(dim=-1, keepdim=True)
    z.sub_(zmax)
    z_y = z.gather(-1, y[:, None]).squeeze(-1)
    z.exp_()
    z.scatter_(-1, imax, 0.0)  # sum every term but the (first) max, which is exp(0) = 1: log1p keeps tiny sums
    rest = z.sum(-1)
    z.scatter_(-1, imax, 1.0)
    ce = torch.log1p(rest) - z_y
    return ce, z, zmax.squeeze(-1), 1.0 + rest


def softmax_again(z: Tensor, zmax: Tensor) -> Tensor:
    """In place: e = exp(z - zmax) from the logits and the forward's saved row max, bit-identical to `softmax_ce`'s."""
    return z.sub_(zmax[:, None]).exp_()


def cost_columns(cos: Tensor, y: Tensor, k_y: Tensor) -> Tensor:
    """In place: the cosines ê_y·ê_i [c,V] of a block's targets become k = C[:, y] = 1 - cos, each target's own
    cost k_y = C[y, y] taken exactly (0 for a unit row, not 1 - (1 ± ulp))."""
    torch.sub(torch.ones((), dtype=cos.dtype, device=cos.device), cos, out=cos)  # one pass, in place
    return cos.scatter_(-1, y[:, None], k_y[:, None])


def expected_cost(e: Tensor, norm: Tensor, k: Tensor) -> Tensor:
    """demd = <q, k> per row, q = e / norm: a row-wise dot without a c x V temporary."""
    return torch.bmm(e[:, None, :], k[:, :, None]).view(-1) / norm


def demd_terms(e: Tensor, norm: Tensor, y: Tensor, e_hat: Tensor, k_y: Tensor,
               out: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(k [c,V] = C[:, y] per row, demd = <q, k>) for one chunk, q = e / norm, k_y = C[y, y] per row; `k` is a
    fresh buffer (or `out`)."""
    k = cost_columns(torch.mm(e_hat[y], e_hat.T, out=out), y, k_y)
    return k, expected_cost(e, norm, k)


def logit_grad(e: Tensor, norm: Tensor, y: Tensor, a: Tensor, b: Tensor | None, k: Tensor | None,
               demd: Tensor | None, out: Tensor | None = None) -> Tensor:
    """dL/dz = q ⊙ (a + b (k - demd)) - a onehot(y), q = e / norm: in `out`, else in place on `k` (or on `e`
    without DEMD). Two passes with DEMD (addcmul, multiply), one without."""
    inv = 1.0 / norm
    if b is None:
        g = torch.mul(e, (a * inv)[:, None], out=out) if out is not None else e.mul_((a * inv)[:, None])
    else:
        g = torch.addcmul(((a - b * demd) * inv)[:, None], k, (b * inv)[:, None], out=k if out is None else out)
        g.mul_(e)
    return g.scatter_add_(-1, y[:, None], -a[:, None])


def row_blocks(rows: Tensor, chunk: int) -> list[tuple[int, int, int]]:
    """(s, e, first row) blocks of at most `chunk` targets whose rows are consecutive in the flat logits,
    so each block is a plain slice `flat[r : r + e - s]` (no index_select, no gather of the logits)."""
    n = rows.numel()
    if n == 0:
        return []
    r = rows.tolist()
    blocks, s = [], 0
    for i in range(1, n + 1):
        if i == n or r[i] != r[i - 1] + 1 or i - s == chunk:
            blocks.append((s, i, r[s]))
            s = i
    return blocks


def unused_ranges(blocks: list[tuple[int, int, int]], total: int) -> list[tuple[int, int]]:
    """Row ranges of the flat logits that predict no target (they get an exact zero gradient)."""
    out, nxt = [], 0
    for s, e, r in blocks:
        if r > nxt:
            out.append((nxt, r))
        nxt = r + e - s
    if nxt < total:
        out.append((nxt, total))
    return out


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
