"""The fused loss (emotune.objectives.fused) against the plain objectives on materialised logits:
value, gradients w.r.t. hidden states / LM-head weight / bias, and diagnostics, for every objective
and variant, in float64 and float32, across chunk boundaries; plus gradcheck, bf16, the chunk x V
memory bound and the all-ignored batch."""

import numpy as np
import pytest
import torch
from objectives_reference import emo_value
from torch.utils._python_dispatch import TorchDispatchMode

from emotune.objectives import CostEmbedding, build_objective
from emotune.objectives.fused import default_chunk_size, fused_loss

CASES = [
    ("mle", {}),
    ("tailr", {"gamma": 0.1, "min_weight": 0.2}),
    ("tailr", {"gamma": 1e-7, "min_weight": 0.3}),
    ("mixce", {"eta": 0.7}),
    ("emo", {}),
    ("emo", {"variant": "emo2"}),
    ("emo", {"variant": "demd"}),
    ("emo", {"ratio_clamp": 3.0}),
    ("emo", {"variant": "emo2", "ratio_clamp": 3.0}),
    ("emo", {"weighting": "batch"}),
    ("emo", {"variant": "emo2", "weighting": "batch"}),
    ("emo", {"gt_detach": True}),
    ("emo", {"gt_detach": True, "variant": "emo2", "weighting": "batch"}),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in p.items()) or 'default'}" for n, p in CASES]


def problem(B=3, T=9, H=8, V=37, H_cost=5, dtype=torch.float64, seed=0, scale=1.0, bias=False):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(B, T, H, generator=g, dtype=torch.float64) * scale).to(dtype).requires_grad_(True)
    weight = (torch.randn(V, H, generator=g, dtype=torch.float64) * 0.8).to(dtype).requires_grad_(True)
    b = (torch.randn(V, generator=g, dtype=torch.float64) * 0.3).to(dtype).requires_grad_(True) if bias else None
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :4] = -100  # masked prompt
    labels[B - 1, -2:] = -100  # padding
    E = torch.randn(V, H_cost, generator=g, dtype=torch.float64)
    return hidden, weight, b, labels, E


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def plain_and_fused(objective, hidden, weight, labels, bias=None, chunk_size=4, num_items=None):
    params = [t for t in (hidden, weight, bias) if t is not None]
    logits = hidden @ weight.T if bias is None else hidden @ weight.T + bias
    ref = objective(logits, labels, num_items_in_batch=num_items)
    ref_grads = torch.autograd.grad(ref.loss, params)
    out = fused_loss(hidden, weight, labels, objective, chunk_size=chunk_size, num_items_in_batch=num_items, bias=bias)
    out_grads = torch.autograd.grad(out.loss, params)
    return ref, ref_grads, out, out_grads


def check_diagnostics(ref, out, tol):
    assert int(out.n_tokens) == int(ref.n_tokens)
    assert float(out.ce) == pytest.approx(float(ref.ce), rel=tol, abs=tol)
    for key in ("demd", "weight"):
        a, b = getattr(out, key), getattr(ref, key)
        assert (a is None) == (b is None), key
        if b is not None:
            assert float(a) == pytest.approx(float(b), rel=tol, abs=tol), key


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-6), (torch.float32, 1e-5)], ids=["fp64", "fp32"])
def test_fused_equals_plain(name, params, dtype, tol):
    hidden, weight, bias, labels, E = problem(dtype=dtype, bias=True)
    objective = build_objective(name, params, CostEmbedding(E) if name == "emo" else None)
    for chunk in (1, 4, 19, 1000):  # 19 target tokens: one chunk that fits exactly, ragged last chunks
        ref, ref_grads, out, out_grads = plain_and_fused(objective, hidden, weight, labels, bias, chunk)
        assert out.loss.item() == pytest.approx(ref.loss.item(), rel=tol, abs=tol)
        for a, b in zip(out_grads, ref_grads):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert rel(a, b) < tol, (chunk, rel(a, b))
        check_diagnostics(ref, out, tol)
    assert int(out.n_tokens) == 19


@pytest.mark.parametrize("variant", ["emo1", "emo2", "demd"])
@pytest.mark.parametrize("weighting", ["token", "batch"])
def test_fused_emo_equals_independent_float64_reference(variant, weighting):
    hidden, weight, _, labels, E = problem()
    out = fused_loss(hidden, weight, labels, build_objective("emo", {"variant": variant, "weighting": weighting}, E),
                     chunk_size=5)
    logits = (hidden @ weight.T).detach().numpy()
    want = emo_value(logits, labels.numpy(), E.numpy(), variant=variant, weighting=weighting)
    assert out.loss.item() == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("cost_kind", ["frozen", "adaptive", "tensor"])
def test_cost_sources_and_cost_width(cost_kind):
    hidden, weight, _, labels, E = problem(H=8, H_cost=13)
    cost = {"frozen": CostEmbedding(E), "adaptive": CostEmbedding(weight, "adaptive"), "tensor": E}[cost_kind]
    objective = build_objective("emo", {"variant": "emo2"}, cost)
    ref, ref_grads, out, out_grads = plain_and_fused(objective, hidden, weight, labels)
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-12)
    assert all(rel(a, b) < 1e-12 for a, b in zip(out_grads, ref_grads))


def test_confident_tokens_emo2_float64():
    # mle_t -> 1e-10: the stable CE keeps EMO-2's ratio demd/mle finite and equal to the plain path.
    hidden, weight, _, labels, E = problem(scale=12.0)
    objective = build_objective("emo", {"variant": "emo2"}, E)
    ref, ref_grads, out, out_grads = plain_and_fused(objective, hidden, weight, labels)
    assert torch.isfinite(out.loss) and out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-9)
    assert all(rel(a, b) < 1e-9 for a, b in zip(out_grads, ref_grads))


@pytest.mark.parametrize("name,params", [("mle", {}), ("emo", {"variant": "demd"})])
def test_gradcheck(name, params):
    # Only objectives without a stop-gradient weight have the finite-difference gradient as their gradient.
    hidden, weight, bias, labels, E = problem(B=2, T=5, H=3, V=7, bias=True)
    objective = build_objective(name, params, E if name == "emo" else None)
    fn = lambda h, w, b: fused_loss(h, w, labels, objective, chunk_size=3, bias=b).loss  # noqa: E731
    assert torch.autograd.gradcheck(fn, (hidden, weight, bias))


def test_num_items_in_batch_and_upstream_gradient_scale():
    hidden, weight, _, labels, E = problem()
    objective = build_objective("emo", {}, E)
    ref, ref_grads, out, out_grads = plain_and_fused(objective, hidden, weight, labels, num_items=torch.tensor(50))
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-12)
    assert all(rel(a, b) < 1e-12 for a, b in zip(out_grads, ref_grads))
    # backward of 0.25 * loss (gradient accumulation) scales the saved gradients
    out = fused_loss(hidden, weight, labels, objective, chunk_size=4)
    g_h, g_w = torch.autograd.grad(0.25 * out.loss, (hidden, weight))
    ref_h, ref_w = torch.autograd.grad(0.25 * objective(hidden @ weight.T, labels).loss, (hidden, weight))
    assert rel(g_h, ref_h) < 1e-12 and rel(g_w, ref_w) < 1e-12


def test_two_micro_batches_accumulate_like_one():
    hidden, weight, _, labels, E = problem(B=4)
    objective = build_objective("emo", {}, E)
    n = int((labels[:, 1:] != -100).sum())
    acc = [torch.zeros_like(weight)]
    for part in (slice(0, 2), slice(2, 4)):
        loss = fused_loss(hidden[part], weight, labels[part], objective, chunk_size=3, num_items_in_batch=n).loss
        acc[0] += torch.autograd.grad(loss, weight)[0]
    whole = torch.autograd.grad(fused_loss(hidden, weight, labels, objective, chunk_size=3).loss, weight)[0]
    assert rel(acc[0], whole) < 1e-12


def test_flat_inputs_and_no_grad_value():
    hidden, weight, _, labels, E = problem()
    objective = build_objective("emo", {}, E)
    ref = fused_loss(hidden, weight, labels, objective, chunk_size=4)
    flat_h, flat_y = hidden[:, :-1].reshape(-1, 8), labels[:, 1:].reshape(-1)
    flat = fused_loss(flat_h, weight, flat_y, objective, chunk_size=4)
    assert flat.loss.item() == pytest.approx(ref.loss.item(), rel=1e-14)
    with torch.no_grad():
        value = fused_loss(hidden, weight, labels, objective, chunk_size=4)
    assert not value.loss.requires_grad and value.loss.item() == pytest.approx(ref.loss.item(), rel=1e-14)
    # a frozen head (LoRA elsewhere): only the hidden-state gradient is built
    weight_frozen = weight.detach()
    out = fused_loss(hidden, weight_frozen, labels, objective, chunk_size=4)
    (g,) = torch.autograd.grad(out.loss, hidden)
    assert rel(g, torch.autograd.grad(objective(hidden @ weight_frozen.T, labels).loss, hidden)[0]) < 1e-12


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_all_ignored_batch_is_zero_with_zero_gradients(name, params):
    hidden, weight, bias, labels, E = problem(dtype=torch.float32, bias=True)
    labels[:] = -100
    objective = build_objective(name, params, E if name == "emo" else None)
    out = fused_loss(hidden, weight, labels, objective, bias=bias)
    grads = torch.autograd.grad(out.loss, (hidden, weight, bias))
    assert out.loss.item() == 0.0 and int(out.n_tokens) == 0 and float(out.ce) == 0.0
    assert all(torch.isfinite(g).all() and not g.any() for g in grads)
    check_diagnostics(objective(hidden @ weight.T + bias, labels), out, 0.0)  # same None / 0 diagnostics


def test_bf16_inputs_float32_math():
    hidden, weight, _, labels, E = problem(dtype=torch.float64, H=16, V=64, scale=0.5)
    objective = build_objective("emo", {}, E)
    h16, w16 = (t.detach().to(torch.bfloat16).requires_grad_(True) for t in (hidden, weight))
    ref, ref_grads, out, out_grads = plain_and_fused(objective, h16, w16, labels, chunk_size=5)
    assert out.loss.dtype == torch.float32 and out_grads[0].dtype == out_grads[1].dtype == torch.bfloat16
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-5)  # the same bf16 logits, fp32 after
    assert rel(out_grads[0], ref_grads[0]) < 1e-2 and rel(out_grads[1], ref_grads[1]) < 1e-2
    # and close to float64 on the bf16-rounded inputs
    hd, wd = (t.detach().double().requires_grad_(True) for t in (h16, w16))
    exact = fused_loss(hd, wd, labels, objective)
    assert out.loss.item() == pytest.approx(exact.loss.item(), rel=3e-3)
    assert rel(out_grads[1].double(), torch.autograd.grad(exact.loss, wd)[0]) < 3e-2


def test_fp16_rows_with_inf_in_ignored_positions_stay_finite():
    hidden, weight, _, labels, E = problem(dtype=torch.float16)
    with torch.no_grad():
        hidden[0, :3] = float("inf")  # positions whose targets are ignored: never projected
    out = fused_loss(hidden, weight, labels, build_objective("emo", {}, E))
    g = torch.autograd.grad(out.loss, hidden)[0]
    assert torch.isfinite(out.loss) and torch.isfinite(g).all()


class _LargestAllocation(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_never_allocates_more_than_a_chunk_of_logits():
    hidden, weight, _, labels, E = problem(B=4, T=40, H=2, H_cost=3, V=97, dtype=torch.float32)
    n_tokens = int((labels[:, 1:] != -100).sum())
    chunk = 8
    for name in ("mle", "emo"):
        objective = build_objective(name, {}, E if name == "emo" else None)
        with _LargestAllocation() as mode:
            out = fused_loss(hidden, weight, labels, objective, chunk_size=chunk)
            torch.autograd.grad(out.loss, (hidden, weight))
        assert mode.largest <= chunk * 97 < n_tokens * 97
        with _LargestAllocation() as mode:  # the plain path does materialise N x V
            torch.autograd.grad(objective(hidden @ weight.T, labels).loss, (hidden, weight))
        assert mode.largest >= n_tokens * 97


def test_bad_inputs_raise_clear_errors():
    hidden, weight, _, labels, E = problem()
    objective = build_objective("mle")
    bad = labels.clone()
    bad[1, 3] = 37
    with pytest.raises(ValueError, match="label ids"):
        fused_loss(hidden, weight, bad, objective)
    with pytest.raises(ValueError, match="hidden size"):
        fused_loss(hidden, weight[:, :5], labels, objective)
    with pytest.raises(ValueError, match="expected hidden"):
        fused_loss(hidden, weight, labels[:, :4], objective)
    with pytest.raises(ValueError, match="vocabulary"):
        fused_loss(hidden, weight, labels, build_objective("emo", {}, E[:20]))
    assert default_chunk_size(32000) == 524 and default_chunk_size(10) >= 16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled path runs on CUDA only")
def test_cuda_compiled_path_equals_cpu_reference():
    hidden, weight, _, labels, E = problem(dtype=torch.float32, T=64, V=300)
    objective = build_objective("emo", {}, E)
    ref = fused_loss(hidden, weight, labels, objective, chunk_size=16)
    ref_g = torch.autograd.grad(ref.loss, (hidden, weight))
    hc, wc = (t.detach().cuda().requires_grad_(True) for t in (hidden, weight))
    out = fused_loss(hc, wc, labels.cuda(), objective, chunk_size=16, compile=True)
    out_g = torch.autograd.grad(out.loss, (hc, wc))
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-5)
    assert all(rel(a.cpu(), b) < 1e-4 for a, b in zip(out_g, ref_g))


def test_compile_request_is_ignored_on_cpu():
    hidden, weight, _, labels, E = problem(dtype=torch.float32)
    objective = build_objective("emo", {}, E)
    a = fused_loss(hidden, weight, labels, objective, compile=True)
    b = fused_loss(hidden, weight, labels, objective)
    assert torch.equal(a.loss, b.loss)
    np.testing.assert_array_equal(torch.autograd.grad(a.loss, weight)[0], torch.autograd.grad(b.loss, weight)[0])
