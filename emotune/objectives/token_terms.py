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

`plain_terms.PlainTerms` is the plain path's autograd function over these; `fused.py` calls them per chunk.
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
    """demd = <q, k> per row, q = e / norm: a row-wise dot that reads both rows and writes nothing of c x V.
    On the CPU one BLAS dot per row: the batched form (`bmm` of 1 x V by V x 1, or `linalg.vecdot`) runs 3x
    slower there, which was a third of EMO's extra time in the fused loss; elsewhere one launch for all rows."""
    if e.device.type != "cpu":
        return torch.bmm(e[:, None, :], k[:, :, None]).view(-1) / norm
    out = torch.empty(e.shape[0], dtype=e.dtype, device=e.device)
    for i in range(e.shape[0]):
        torch.dot(e[i], k[i], out=out[i])
    return out.div_(norm)


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


def scaled_logit_grad(e: Tensor, norm: Tensor, y: Tensor, a: Tensor, b: Tensor, k: Tensor,
                      demd: Tensor) -> tuple[Tensor, Tensor]:
    """(g, r) with dL/dz = r[:, None] * g, in place on `k`, for the fused loss, whose matmuls take r on their c x H
    side: g = e ⊙ (k + γ) - (a / r) onehot(y), r = b / norm, γ = a / b - demd. Two passes over c x V with one
    row scalar each (torch vectorises those) instead of logit_grad's `a + b k`, whose two row scalars in one
    op run element by element on the CPU. A row with b = 0, or too small for a / b, gets logit_grad's form, r = 1."""
    fold = b.abs() * 2.0**32 > a.abs()
    exact = None
    if not bool(fold.all()):
        rows = (~fold).nonzero().squeeze(1)
        exact = rows, logit_grad(e[rows], norm[rows], y[rows], a[rows], b[rows], k[rows], demd[rows])
    one = torch.ones_like(b)
    r = torch.where(fold, b / norm, one)
    gamma = torch.where(fold, a / torch.where(fold, b, one) - demd, torch.zeros_like(b))
    g = k.add_(gamma[:, None]).mul_(e)
    g.scatter_add_(-1, y[:, None], (-a / r)[:, None])
    if exact is not None:
        g[exact[0]] = exact[1]
    return g, r


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
