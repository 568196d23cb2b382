"""The plain path's ways of keeping C[:, y] for the backward (emotune/objectives/plain_terms.py): one table row
per distinct target, the targets' own rows of a buffer that becomes the gradient, one table row per target.
Each gives the float64 dense-matrix value and gradient, the low-precision ones bit for bit the same as each
other, and a retained graph's second backward gives the first one's gradient without touching it."""

import pytest
import torch
from objectives_reference import cost_matrix

from emotune.objectives import emo
from emotune.objectives import plain_terms as tt

LAYOUTS = {  # (SHARED_COLUMNS_BELOW, reuse the gradient's buffer)
    "distinct-target-table": (1.01, True),
    "in-place-rows": (0.0, True),
    "per-target-table": (0.0, False),
}


def batch(V=7, B=2, T=9, dtype=torch.float64, seed=0, masked=True):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, T, V, generator=g, dtype=torch.float64) * 2).to(dtype)
    labels = torch.randint(0, V, (B, T), generator=g)
    if masked:
        labels[0, :3] = -100
        labels[1, 5] = -100  # masked rows inside a sequence: several runs of consecutive rows
    E = torch.randn(V, 4, generator=g, dtype=torch.float64)
    return logits, labels, E


def use_layout(monkeypatch, layout):
    """Force one layout; returns the list the in-place buffer's builder appends to when it runs."""
    share, reuse = LAYOUTS[layout]
    monkeypatch.setattr(tt, "SHARED_COLUMNS_BELOW", share)
    if not reuse:
        monkeypatch.setattr(tt, "reuse_for_gradient", lambda flat, rows, cdt: False)
    calls, build = [], tt.cosines_in_place

    def spy(*args):
        calls.append(1)
        return build(*args)

    monkeypatch.setattr(tt, "cosines_in_place", spy)
    return calls


def reference(logits, labels, E):
    """EMO-1 by the dense cost matrix, float64 autograd."""
    C = torch.tensor(cost_matrix(E.numpy()))
    V = logits.shape[-1]
    z, y = logits[:, :-1].reshape(-1, V).double(), labels[:, 1:].reshape(-1)
    keep = y != -100
    z, y = z[keep], y[keep]
    ce = -torch.log_softmax(z, -1).gather(-1, y[:, None]).squeeze(-1)
    demd = (torch.softmax(z, -1) * C[:, y].T).sum(-1)
    return (0.5 * (ce + (ce / demd).detach() * demd)).mean(), demd.mean()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_gives_the_float64_value_and_gradient(monkeypatch, layout):
    calls = use_layout(monkeypatch, layout)
    logits, labels, E = batch()
    logits.requires_grad_(True)
    got = emo(logits, labels, E)
    (g_got,) = torch.autograd.grad(got.loss, logits)
    assert len(calls) == (layout == "in-place-rows")
    want, want_demd = reference(logits, labels, E)
    (g_want,) = torch.autograd.grad(want, logits)
    assert got.loss.item() == pytest.approx(want.item(), abs=1e-12)
    assert got.demd.item() == pytest.approx(want_demd.item(), abs=1e-12)
    assert torch.allclose(g_got, g_want, atol=1e-12, rtol=0)
    assert (g_got[0, :2] == 0).all() and (g_got[1, 4] == 0).all() and (g_got[:, -1] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_layouts_agree_bit_for_bit(monkeypatch, dtype):
    """The 2-byte gradient written over the float32 cost rows (in place) equals the one from a separate table."""
    logits, labels, E = batch(V=300, B=3, T=40, dtype=dtype, seed=1)  # ~117 targets over 300 ids: mostly distinct
    grads = {}
    for layout in ("in-place-rows", "per-target-table"):
        with monkeypatch.context() as m:
            use_layout(m, layout)
            x = logits.clone().requires_grad_(True)
            out = emo(x, labels, E)
            (grads[layout],) = torch.autograd.grad(out.loss, x)
            grads[layout + " loss"] = out.loss.detach()
    assert grads["in-place-rows"].dtype == dtype
    assert torch.equal(grads["in-place-rows"], grads["per-target-table"])
    assert torch.equal(grads["in-place-rows loss"], grads["per-target-table loss"])
    assert torch.isfinite(grads["in-place-rows"].float()).all()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_retained_graph_runs_the_backward_twice_without_touching_the_first_gradient(monkeypatch, layout, dtype):
    calls = use_layout(monkeypatch, layout)
    logits, labels, E = batch(dtype=dtype)
    x = logits.clone().requires_grad_(True)
    loss = emo(x, labels, E).loss
    (first,) = torch.autograd.grad(loss, x, retain_graph=True)
    kept = first.clone()
    (second,) = torch.autograd.grad(loss, x)
    assert len(calls) == (2 if layout == "in-place-rows" else 0)  # the second backward rebuilt its cost rows
    assert torch.equal(first, kept)
    assert torch.equal(second, kept)


def test_heavily_masked_bf16_batch_keeps_a_per_target_table():
    """Most rows masked (instruction tuning): a float32 [B*T, V] buffer would outweigh table + bf16 gradient."""
    flat = torch.zeros(10, 5, dtype=torch.bfloat16)
    assert not tt.reuse_for_gradient(flat, torch.arange(4), torch.float32)
    assert tt.reuse_for_gradient(flat, torch.arange(5), torch.float32)
    assert tt.reuse_for_gradient(flat.float(), torch.arange(1), torch.float32)


def test_scaled_cosine_grad_is_logit_grad_with_its_row_factor():
    """The fused loss's DEMD gradient from the cosines (k = 1 - cos never formed) with the row factor f taken out
    (applied on the c x H side), rows with b = 0, b too small for a / b or for b / norm, and a = 0 (DEMD only) included:
    f ⊙ g equals logit_grad's dL/dz on the cost columns, in float64."""
    from emotune.objectives.token_terms import logit_grad, scaled_cosine_grad

    gen = torch.Generator().manual_seed(0)
    c, vocab = 6, 50
    z = torch.randn(c, vocab, dtype=torch.float64, generator=gen) * 3
    z[4] = 0.0  # norm 50, for the underflow row below
    y = torch.randint(0, vocab, (c,), generator=gen)
    e = (z - z.max(-1, keepdim=True).values).exp()
    norm = e.sum(-1)
    e_y = e.gather(-1, y[:, None]).squeeze(-1)
    cos = (torch.rand(c, vocab, dtype=torch.float64, generator=gen) * 2 - 1).scatter_(-1, y[:, None], 0.0)
    k_y = torch.tensor([0.0, 0.0, 0.3, 0.0, 1.0, 0.0], dtype=torch.float64)  # shrunk and zero rows of Ê too
    k = (1 - cos).scatter_(-1, y[:, None], k_y[:, None])
    demd = (e * k).sum(-1) / norm
    a = torch.rand(c, dtype=torch.float64, generator=gen)
    b = torch.rand(c, dtype=torch.float64, generator=gen)
    b[1], b[2], a[3] = 0.0, 1e-300, 0.0
    a[4], b[4] = 0.0, 5e-324  # b / norm underflows to 0: a / r would be 0 / 0
    ref = logit_grad(e, norm, y, a, b, k.clone(), demd)
    g, f = scaled_cosine_grad(e, norm, y, a, b, cos.clone(), demd, e_y, k_y)
    assert f[1] == f[2] == f[4] == 1.0 and f[0] == -b[0] / norm[0] and bool(torch.isfinite(g).all())
    torch.testing.assert_close(g * f[:, None], ref, rtol=1e-12, atol=1e-15)


def test_demd_cosines_equal_the_cost_column_form():
    """demd = (off - <e, cos> + e_y k_yy) / norm (fused) against sum_i q_i k_i on the cost columns (plain), float64,
    and in float32 for confident rows (q_y = 1 - 1e-9): relative accuracy kept, no `1 - c̄` cancellation."""
    from emotune.objectives.token_terms import cost_columns, demd_cosines, expected_cost, self_cost, softmax_parts

    gen = torch.Generator().manual_seed(1)
    c, vocab = 7, 64
    e_hat = torch.nn.functional.normalize(torch.randn(vocab, 9, dtype=torch.float64, generator=gen), dim=-1)
    e_hat[5] *= 0.5  # a row the eps policy shrank: k_yy = 1 - |ê|²
    y = torch.tensor([5, 1, 2, 3, 4, 5, 6])
    z = torch.randn(c, vocab, dtype=torch.float64, generator=gen) * 2
    z[3:, :] -= 25.0
    z[torch.arange(3, c), y[3:]] += 25.0  # confident rows: the target is the max by ~25 nats
    k_y = self_cost(e_hat[y])
    ref_e = torch.softmax(z, -1)
    ref = ((ref_e * (1 - e_hat[y] @ e_hat.T)).scatter(-1, y[:, None], 0.0).sum(-1) + ref_e.gather(-1, y[:, None])[:, 0] * k_y)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-5)):
        zz, eh = z.to(dtype), e_hat.to(dtype)
        _, e, _, norm, off, e_y = softmax_parts(zz.clone(), y)
        _, demd = demd_cosines(e, norm, off, e_y, y, eh, k_y.to(dtype))
        torch.testing.assert_close(demd.double(), ref, rtol=tol, atol=0)
        if dtype == torch.float64:
            _, e2, _, norm2 = softmax_parts(zz.clone(), y)[:4]
            plain = expected_cost(e2, norm2, cost_columns(eh[y] @ eh.T, y, k_y))  # the plain path's form
            torch.testing.assert_close(demd, plain, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_dot_equals_float64_sum(dtype):
    """Per-row <a, b> (numpy's einsum on the CPU; bmm where autograd or another device needs it): a strided view
    and a tensor needing grad included."""
    from emotune.objectives.token_terms import row_dot

    gen = torch.Generator().manual_seed(2)
    a, b = (torch.randn(5, 1000, dtype=torch.float64, generator=gen) for _ in range(2))
    ref = (a * b).sum(-1)
    for x, w in ((a, b), (a[:, ::2], b[:, 1::2])):
        r = (x * w).sum(-1)
        got = row_dot(x.to(dtype), w.to(dtype))
        assert got.dtype == dtype and got.shape == (5,)
        torch.testing.assert_close(got.double(), r, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-4)
    leaf = a.to(dtype).requires_grad_(True)
    torch.testing.assert_close(row_dot(leaf, b.to(dtype)).detach().double(), ref, rtol=1e-5, atol=1e-4)
