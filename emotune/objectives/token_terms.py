"""Per-token CE and DEMD of a block of logit rows, and their logit gradient: the kernel behind both paths.

The plain path (`losses.py`, on materialised logits) and the fused path (`fused.py`, from hidden states)
both walk the target rows in chunks and call these functions on a chunk x V float32 buffer. With
q = softmax(z), k_i = C[i, y] = 1 - ê_i·ê_y:

    ce   = (zmax - z_y) + log1p(sum_{i != argmax} exp(z_i - zmax))   no `lse - z_y` cancellation
    demd = sum_{i != y} q_i k_i  (+ q_y k_yy, k_yy exact: 0 for a unit row)   no `1 - c̄` cancellation
    dL/dz = a (q - onehot(y)) + b q ⊙ (k - demd)  with a = dL/d ce_t, b = dL/d demd_t

`1 - c̄` (the textbook form) loses everything in float32 for a confident token: c̄ = 1 - 5e-11 rounds to 1,
demd to ~1e-7 noise of either sign, and EMO-2's weight demd / ce becomes garbage. Summing q_i k_i with the
target's own term taken exactly keeps the relative accuracy of every term.

The plain path forms the cost columns k (`cost_columns`, `expected_cost`, `logit_grad`; `plain_terms.PlainTerms`
is its autograd function). The fused path never forms k: it keeps the cosines and takes the same sums as
off-target mass minus <e, cos> (`demd_cosines`, `scaled_cosine_grad`), one pass over c x V fewer, with the
target's own term still left out and taken exactly; the two agree to float32 rounding (tests/objectives).
Everything runs with autocast disabled: the math is float32 (float64 stays float64) whatever the context.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
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
    return softmax_parts(z, y)[:4]


def softmax_parts(z: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """`softmax_ce` plus (off, e_y): off = sum_{i != y} e_i, the mass off the target, to full relative accuracy
    (when the target is the max, `norm - 1` would round it away: it is the sum of the others, taken directly)."""
    zmax, imax = z.max(dim=-1, keepdim=True)
    z.sub_(zmax)
    z_y = z.gather(-1, y[:, None]).squeeze(-1)
    z.exp_()
    z.scatter_(-1, imax, 0.0)  # sum every term but the (first) max, which is exp(0) = 1: log1p keeps tiny sums
    rest = z.sum(-1)
    z.scatter_(-1, imax, 1.0)
    ce = torch.log1p(rest) - z_y
    norm = 1.0 + rest
    e_y = z.gather(-1, y[:, None]).squeeze(-1)
    off = torch.where(imax.squeeze(-1) == y, rest, norm - e_y)  # otherwise off >= 1 (it holds the max's 1)
    return ce, z, zmax.squeeze(-1), norm, off, e_y


def softmax_again(z: Tensor, zmax: Tensor) -> Tensor:
    """In place: e = exp(z - zmax) from the logits and the forward's saved row max, bit-identical to `softmax_ce`'s."""
    return z.sub_(zmax[:, None]).exp_()


def cost_columns(cos: Tensor, y: Tensor, k_y: Tensor) -> Tensor:
    """In place: the cosines ê_y·ê_i [c,V] of a block's targets become k = C[:, y] = 1 - cos, each target's own
    cost k_y = C[y, y] taken exactly (0 for a unit row, not 1 - (1 ± ulp))."""
    torch.sub(torch.ones((), dtype=cos.dtype, device=cos.device), cos, out=cos)  # one pass, in place
    return cos.scatter_(-1, y[:, None], k_y[:, None])


def row_dot(a: Tensor, b: Tensor) -> Tensor:
    """sum_j a_ij b_ij per row [c, V] -> [c], reading both once and writing nothing of c x V. On the CPU numpy's
    einsum: one call at memory speed, where torch's batched forms (`bmm` of 1 x V by V x 1, `linalg.vecdot`) run
    3-6x slower and a loop of `torch.dot` pays ~8 us of dispatch per row; elsewhere one launch for all rows."""
    if (a.device.type != "cpu" or a.requires_grad or b.requires_grad
            or a.dtype not in (torch.float32, torch.float64) or b.dtype != a.dtype):
        return torch.bmm(a[:, None, :], b[:, :, None]).view(-1)
    return torch.from_numpy(np.einsum("ij,ij->i", a.numpy(), b.numpy()))


def expected_cost(e: Tensor, norm: Tensor, k: Tensor) -> Tensor:
    """demd = <q, k> per row, q = e / norm."""
    return row_dot(e, k).div_(norm)


def demd_cosines(e: Tensor, norm: Tensor, off: Tensor, e_y: Tensor, y: Tensor, e_hat: Tensor, k_y: Tensor,
                 out: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The fused loss's form of (cost_columns, expected_cost), one pass over c x V fewer: (cos [c,V] = ê_y·ê_i with the target's
    own entry set to 0, demd) where demd·norm = sum_{i != y} e_i (1 - cos_i) + e_y k_yy = off - <e, cos> + e_y k_yy.
    No `1 - c̄` cancellation: the target's own term (cos ~ 1 for a confident token) is left out of the dot and
    `off` is the others' mass to full relative accuracy (`softmax_parts`), so the difference keeps the
    relative accuracy of sum_{i != y} q_i k_i, as the per-element form does."""
    cos = torch.mm(e_hat[y], e_hat.T, out=out).scatter_(-1, y[:, None], 0.0)
    return cos, (off - row_dot(e, cos) + e_y * k_y) / norm


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


def scaled_cosine_grad(e: Tensor, norm: Tensor, y: Tensor, a: Tensor, b: Tensor, cos: Tensor, demd: Tensor,
                       e_y: Tensor, k_y: Tensor) -> tuple[Tensor, Tensor]:
    """(g, f) with dL/dz = f[:, None] * g, in place on `cos` (from `demd_cosines`), for the fused loss, whose
    matmuls take the row factor f on their c x H side. With r = b / norm and γ = a / b - demd, for i != y
    dL/dz_i = r e_i (k_i + γ) = -r e_i (cos_i - (1 + γ)): g = (cos - (1 + γ)) ⊙ e, f = -r, two in-place passes
    with one row scalar each (torch vectorises those; `a + b k`'s two row scalars in one op run element by element
    on the CPU), and `1 - cos` is never formed. The target's entry is set exactly: g_y = a / r - e_y (k_yy + γ).
    A row with b = 0, or too small for a / b (or for r), gets logit_grad's form, f = 1."""
    fold = (b.abs() * 2.0**32 > a.abs()) & (b / norm != 0)  # a / r, a / b finite where folded
    exact = None
    if not bool(fold.all()):
        rows = (~fold).nonzero().squeeze(1)
        k = cost_columns(cos[rows], y[rows], k_y[rows])  # cos[rows] is a copy: the kernel's k for these rows only
        exact = rows, logit_grad(e[rows], norm[rows], y[rows], a[rows], b[rows], k, demd[rows])
    one = torch.ones_like(b)
    r = torch.where(fold, b / norm, one)
    gamma = torch.where(fold, a / torch.where(fold, b, one) - demd, torch.zeros_like(b))
    g = cos.sub_((1.0 + gamma)[:, None]).mul_(e)
    g.scatter_(-1, y[:, None], (a / r - e_y * (k_y + gamma))[:, None])
    if exact is not None:
        g[exact[0]] = exact[1]
    return g, torch.where(fold, -r, one)


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
