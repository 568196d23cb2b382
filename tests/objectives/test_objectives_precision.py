"""Mixed precision against float64: the precision matrix (every objective, one-hot and dense targets, x fp32 /
bf16 / fp16 with loss scale 2^16 x plain / fused), and one test per numerics defect that only shows in low precision: the fp16
loss scale and bf16 accumulation factor in the fused backward, a step divisor below 1, ambient autocast,
DEMD's cancellation for a confident model, LoRA on a bf16 LM head."""

import numpy as np
import pytest
import torch
from objectives_reference import per_token
from precision_matrix import (
    AT_ROUNDED_LOGITS,
    DENSE,
    DTYPES,
    OBJECTIVES,
    UNIT_ROUNDOFF,
    errors,
    errors_at_rounded_logits,
    kink,
    name_of,
    tolerance,
)

from emotune.objectives import CostEmbedding, build_objective, emo, mle
from emotune.objectives.fused import fused_loss

ALL = OBJECTIVES + DENSE


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("name,params", ALL, ids=[name_of(n, p) for n, p in ALL])
def test_precision_matrix(name, params, dtype_name):
    """Each error below 4x the worst measured over seeds and shapes (tests/precision_matrix.py, MEASURED)."""
    errs = errors(name, params, dtype_name)
    tol_loss, tol_grad = tolerance(name, params, dtype_name)
    u = UNIT_ROUNDOFF[dtype_name]
    for path, (loss_err, gh_err, gw_err, finite) in errs.items():
        assert finite, path
        assert loss_err < tol_loss and gh_err < tol_grad and gw_err < tol_grad, (path, loss_err, gh_err, gw_err)
    # fused never worse than plain. Both errors are the max over entries of sums of many roundings made in
    # different places (chunked vs one matmul, chunk partial sums of the loss), so they differ by noise: 15%
    # of the plain error plus two unit roundoffs. The defects this guards against were 2-5x, or inf.
    for plain_err, fused_err in zip(errs["plain"][:3], errs["fused"][:3]):
        assert fused_err <= 1.15 * plain_err + 2 * u, (errs["plain"], errs["fused"])


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("name,params", ALL, ids=[name_of(n, p) for n, p in ALL])
def test_precision_at_the_rounded_logits(name, params, dtype_name):
    """Against float64 from the logits the dtype's matmuls made, every objective is float32-exact in its loss and
    as good as the dtype's backward matmuls in its gradients, the dense DEMD's kink included: its larger error in
    the matrix is the logits' rounding flipping sign(q - p), not the kernel (docs/objectives.md, *Dense targets*)."""
    loss_err, gh_err, gw_err = errors_at_rounded_logits(name, params, dtype_name)["plain"]
    tol_loss, tol_grad = AT_ROUNDED_LOGITS[dtype_name]
    assert loss_err < tol_loss and gh_err < tol_grad and gw_err < tol_grad, (loss_err, gh_err, gw_err)


def test_the_dense_kink_is_what_the_matrix_sees():
    """bf16 / fp16: DEMD to a teacher is several times further from float64 at the rounded inputs than at the rounded
    logits (the kink), and its loss is not: the value is continuous in the logits."""
    assert kink("demd", {"target": "teacher"}) and not kink("kd_forward", {}) and not kink("emo1", {})
    for dtype_name in ("bf16", "fp16"):
        at_inputs = errors("demd", {"target": "teacher"}, dtype_name)["plain"]
        at_logits = errors_at_rounded_logits("demd", {"target": "teacher"}, dtype_name)["plain"]
        assert max(at_inputs[1:3]) > 10 * max(at_logits[1:3]), (at_inputs, at_logits)
        one_hot = errors("demd", {}, dtype_name)["plain"]
        assert max(at_inputs[1:3]) > 3 * max(one_hot[1:3]), (at_inputs, one_hot)


def _head_problem(dtype, seed=0, N=300, H=48, V=256):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, H, generator=g).to(dtype).requires_grad_(True)
    w = (torch.randn(V, H, generator=g) * H ** -0.5 * 2).to(dtype).requires_grad_(True)
    y = torch.randint(0, V, (N,), generator=g)
    E = torch.randn(V, 16, generator=g)
    return h, w, y, E


@pytest.mark.parametrize("scale", [2.0 ** 15, 2.0 ** 16, 2.0 ** 32])
def test_fp16_loss_scale_in_fused_backward(scale):
    """GradScaler / DeepSpeed start at 2^16: the scale is inf in fp16, so it must be applied in float32;
    at 2^15 the gradient must still be formed at the scale (an unscaled per-token gradient, ~q / 4096
    here as with a large global batch, is subnormal in fp16)."""
    h, w, y, E = _head_problem(torch.float16)
    objective = build_objective("emo", {}, CostEmbedding(E))
    items = 4096  # the step's global target count (num_items_in_batch), as in data-parallel training
    out = fused_loss(h, w, y, objective, chunk_size=64, num_items_in_batch=items)
    gh, gw = torch.autograd.grad(out.loss * scale, (h, w))
    if scale > 2.0 ** 30:  # 2^32: the scaled gradient really overflows fp16: DeepSpeed must see inf and skip
        assert not (torch.isfinite(gh).all() and torch.isfinite(gw).all())
        return
    labels = torch.cat([torch.tensor([-100]), y])[None]
    hp, wp = h.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    plain = objective((torch.cat([hp, hp[:1]]) @ wp.T)[None], labels, num_items_in_batch=items)
    ph, pw = torch.autograd.grad(plain.loss * scale, (hp, wp))
    hd, wd = h.detach().double().requires_grad_(True), w.detach().double().requires_grad_(True)
    ref = build_objective("emo", {}, CostEmbedding(E.double()))((torch.cat([hd, hd[:1]]) @ wd.T)[None], labels,
                                                                 num_items_in_batch=items)
    ref_h, ref_w = torch.autograd.grad(ref.loss, (hd, wd))
    assert torch.isfinite(gh).all() and torch.isfinite(gw).all()
    err = lambda g, r: float((g.double() / scale - r).abs().max() / r.abs().max())  # noqa: E731
    for fused_g, plain_g, r in ((gh, ph, ref_h), (gw, pw, ref_w)):
        assert err(fused_g, r) < 5e-3
        assert err(fused_g, r) <= 1.15 * err(plain_g, r) + 2.0 ** -11, (err(fused_g, r), err(plain_g, r))


def test_bf16_accumulation_factor_is_not_rounded():
    """backward of loss / 3 (gradient accumulation 3): the 1/3 must not be rounded to bf16 (0.18% bias)."""
    h, w, y, E = _head_problem(torch.bfloat16, N=512)
    objective = build_objective("emo", {}, CostEmbedding(E))
    out = fused_loss(h, w, y, objective, chunk_size=100)
    g1 = torch.autograd.grad(out.loss, w, retain_graph=True)[0].double()
    g3 = torch.autograd.grad(out.loss / 3, w)[0].double()
    nz = g1.abs() > g1.abs().max() * 1e-3
    bias = float((3 * g3[nz] / g1[nz]).mean() - 1)
    assert abs(bias) < 5e-4, bias


def test_divisor_below_one_is_kept_not_clamped():
    """A step with fewer target tokens than ranks x accumulation: num_items_in_batch = 0.25 is a real divisor."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 3, 11, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[0, 4, -100]])
    want = sum(r[0] for r in per_token(logits.detach().numpy(), labels.numpy())) / 0.25
    assert mle(logits, labels, num_items_in_batch=0.25).loss.item() == pytest.approx(want, rel=1e-12)
    h = torch.randn(1, 3, 5, generator=g, dtype=torch.float64)
    w = torch.randn(11, 5, generator=g, dtype=torch.float64)
    fused = fused_loss(h, w, labels, build_objective("mle"), num_items_in_batch=torch.tensor(0.25))
    plain = mle(h @ w.T, labels, num_items_in_batch=torch.tensor(0.25))
    assert fused.loss.item() == pytest.approx(plain.loss.item(), rel=1e-12)
    assert plain.loss.item() == pytest.approx(4 * float(plain.ce), rel=1e-12)
    # a divisor of 0 (no targets anywhere) is guarded: a zero loss, no NaN
    empty = torch.tensor([[0, -100, -100]])
    assert mle(logits, empty, num_items_in_batch=0).loss.item() == 0.0


def test_ambient_autocast_does_not_reach_the_objective():
    """Under bf16 autocast (HF Trainer / TRL adapters) the DEMD matmul must still be float32."""
    h, w, y, E = _head_problem(torch.float32, N=64)
    labels = torch.cat([torch.tensor([-100]), y])[None]
    logits = torch.cat([h, h[:1]]).detach()[None] @ w.detach().T  # row t = h[t] predicts labels[t+1] = y[t]
    objective = build_objective("emo", {"variant": "emo2"}, CostEmbedding(E))
    want = objective(logits.double(), labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = objective(logits, labels)
    assert got.loss.dtype == torch.float32
    assert float(got.demd) == pytest.approx(float(want.demd), rel=1e-6)
    assert got.loss.item() == pytest.approx(want.loss.item(), rel=1e-6)
    # fused: the head matmul follows autocast (bf16, like the model's own lm_head would); the loss math does not
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = fused_loss(h, w, y, objective, chunk_size=16)
        head_logits = torch.cat([h, h[:1]]) @ w.T
    assert head_logits.dtype == torch.bfloat16
    plain = objective(head_logits[None].float(), labels)
    assert fused.loss.item() == pytest.approx(plain.loss.item(), rel=1e-6)
    assert float(fused.demd) == pytest.approx(float(plain.demd), rel=1e-5)


def _confident(margin=30.0, V=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, V, (8,), generator=g)
    z = torch.randn(8, V, generator=g, dtype=torch.float64) - margin
    z[torch.arange(8), y] = 0.0
    E = torch.randn(V, 12, generator=g, dtype=torch.float64)
    return z, y, E


def test_demd_of_a_confident_model_keeps_its_relative_accuracy():
    """True DEMD ~1e-10: `1 - c̄` in float32 gives noise of either sign and an EMO-2 weight of the wrong sign."""
    z, y, E = _confident()
    labels = torch.cat([torch.tensor([-100]), y])[None]
    logits = torch.cat([z, z[:1]])[None]  # row t = z[t] predicts labels[t+1] = y[t]
    rows = per_token(logits.numpy(), labels.numpy(), E.numpy())
    demd_ref = np.array([r[1] for r in rows])
    ratio_ref = demd_ref / np.maximum(np.array([r[0] for r in rows]), 1e-8)  # the spec's guarded ratio
    assert demd_ref.max() < 1e-10
    for dtype in (torch.float32, torch.float64):
        cost = CostEmbedding(E.to(dtype))
        out = emo(logits.to(dtype), labels, cost, variant="emo2")
        assert float(out.demd) == pytest.approx(demd_ref.mean(), rel=1e-4)
        assert float(out.weight) == pytest.approx(ratio_ref.mean(), rel=1e-4)
        # the fused path on the same logits (an identity head) agrees
        eye = torch.eye(z.shape[1], dtype=dtype)
        fused = fused_loss(z.to(dtype), eye, y, build_objective("emo2", {}, cost), chunk_size=3)
        assert float(fused.demd) == pytest.approx(demd_ref.mean(), rel=1e-4)
        assert float(fused.weight) == pytest.approx(ratio_ref.mean(), rel=1e-4)


def test_lora_on_a_bf16_head_keeps_small_adapter_deltas():
    """logits = h W + s (h A) B: folding s B A into a bf16 W first rounds small deltas away."""
    h, w, y, E = _head_problem(torch.bfloat16, N=128)
    g = torch.Generator().manual_seed(5)
    a = (torch.randn(4, h.shape[1], generator=g) * 0.1).bfloat16().requires_grad_(True)
    b = (torch.randn(w.shape[0], 4, generator=g) * 1e-2).bfloat16().requires_grad_(True)
    s = 2.0
    objective = build_objective("emo", {}, CostEmbedding(E))
    params = (h, w, a, b)
    labels = torch.cat([torch.tensor([-100]), y])[None]

    def logits_of(hh, ww, aa, bb):  # what PEFT's LoRA layer computes in the parameters' dtype
        rows = torch.cat([hh, hh[:1]])
        return (rows @ ww.T + (rows @ aa.T) @ bb.T * s)[None]

    d = [p.detach().double().requires_grad_(True) for p in params]
    ref = build_objective("emo", {}, CostEmbedding(E.double()))(logits_of(*d), labels)
    ref_g = torch.autograd.grad(ref.loss, d)
    plain = objective(logits_of(*params), labels)
    plain_g = torch.autograd.grad(plain.loss, params)
    fused = fused_loss(h, w, y, objective, chunk_size=32, lora=[(a, b, s)])
    fused_g = torch.autograd.grad(fused.loss, params)
    folded = fused_loss(h, (w.float() + s * b.float() @ a.float()).bfloat16(), y, objective, chunk_size=32)
    err = lambda x, r: float((x.double() - r).abs().max() / r.abs().max())  # noqa: E731
    assert abs(fused.loss.item() - ref.loss.item()) <= abs(plain.loss.item() - ref.loss.item()) + 1e-6
    assert abs(fused.loss.item() - ref.loss.item()) < abs(folded.loss.item() - ref.loss.item())
    for name, fg, pg, rg in zip("hwab", fused_g, plain_g, ref_g):
        assert err(fg, rg) <= err(pg, rg) + 2.0 ** -8, name
