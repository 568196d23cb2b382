"""The fused loss with a dense target against the plain path on materialised logits: value, gradients and
diagnostics for every dense-target objective; the teacher's logits made inside from its hidden states and LM
head; never a [N, V] tensor."""

import pytest
import torch
from test_fused import _LargestAllocation, check_diagnostics, problem, rel
from test_objectives_dense import DENSE, DENSE_IDS

from emotune.objectives import CostEmbedding, build_objective
from emotune.objectives.fused import fused_loss


def teacher(H_t=6, V=37, dtype=torch.float64, seed=1, B=3, T=9, bias=True):
    g = torch.Generator().manual_seed(seed)
    h_t = torch.randn(B, T, H_t, generator=g, dtype=torch.float64).to(dtype)
    w_t = (torch.randn(V, H_t, generator=g, dtype=torch.float64) * 0.9).to(dtype)
    b_t = (torch.randn(V, generator=g, dtype=torch.float64) * 0.3).to(dtype) if bias else None
    return h_t, w_t, b_t


def both(objective, hidden, weight, bias, labels, t, chunk):
    params = [x for x in (hidden, weight, bias) if x is not None]
    h_t, w_t, b_t = t
    flat = h_t.reshape(-1, h_t.shape[-1])  # the teacher head as its nn.Linear computes it (addmm in its dtype)
    logits_t = (flat @ w_t.T if b_t is None else torch.addmm(b_t, flat, w_t.T)).view(*h_t.shape[:-1], -1)
    ref = objective(hidden @ weight.T + bias, labels, teacher_logits=logits_t)
    ref_grads = torch.autograd.grad(ref.loss, params)
    out = fused_loss(hidden, weight, labels, objective, chunk_size=chunk, bias=bias, teacher=t)
    return ref, ref_grads, out, torch.autograd.grad(out.loss, params)


@pytest.mark.parametrize("name,params", DENSE, ids=DENSE_IDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)], ids=["fp64", "fp32"])
def test_fused_dense_equals_plain(name, params, dtype, tol):
    hidden, weight, bias, labels, E = problem(dtype=dtype, bias=True)
    objective = build_objective(name, params, CostEmbedding(E.to(dtype)))
    t = teacher(dtype=dtype)
    for chunk in (1, 4, 19, 1000):
        ref, ref_grads, out, out_grads = both(objective, hidden, weight, bias, labels, t, chunk)
        assert out.loss.item() == pytest.approx(ref.loss.item(), rel=tol, abs=tol)
        for a, b in zip(out_grads, ref_grads):
            assert a.dtype == b.dtype and rel(a, b) < tol, (chunk, rel(a, b))
        check_diagnostics(ref, out, tol)


def test_teacher_in_bf16_student_in_float32():
    hidden, weight, bias, labels, E = problem(dtype=torch.float32, bias=True)
    h_t, w_t, b_t = (x.to(torch.bfloat16) for x in teacher(dtype=torch.float32))
    objective = build_objective("emo", {"target": "teacher"}, CostEmbedding(E.float()))
    ref, ref_grads, out, out_grads = both(objective, hidden, weight, bias, labels, (h_t, w_t, b_t), 4)
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-5)
    assert all(rel(a, b) < 1e-4 for a, b in zip(out_grads, ref_grads))


def test_never_allocates_more_than_a_chunk_of_logits():
    hidden, weight, _, labels, E = problem(B=4, T=40, H=2, H_cost=3, V=97, dtype=torch.float32)
    h_t, w_t, _ = teacher(H_t=2, B=4, T=40, V=97, dtype=torch.float32)
    n_tokens, chunk = int((labels[:, 1:] != -100).sum()), 8
    for name, params in [("emo", {"target": "teacher"}), ("kd_reverse", {}), ("emo", {"target": "smoothed"})]:
        objective = build_objective(name, params, CostEmbedding(E))
        with _LargestAllocation() as mode:
            out = fused_loss(hidden, weight, labels, objective, chunk_size=chunk, teacher=(h_t, w_t, None))
            torch.autograd.grad(out.loss, (hidden, weight))
        assert mode.largest <= chunk * 97 < n_tokens * 97, name


def test_teacher_shapes_are_checked_and_no_grad_path_matches():
    hidden, weight, _, labels, E = problem()
    h_t, w_t, _ = teacher()
    objective = build_objective("kd_forward", {"temperature": 2.0})
    with pytest.raises(ValueError, match="same vocabulary"):
        fused_loss(hidden, weight, labels, objective, teacher=(h_t, w_t[:-1], None))
    with pytest.raises(ValueError, match="must match the student's"):
        fused_loss(hidden, weight, labels, objective, teacher=(h_t[:, :-1], w_t, None))
    with pytest.raises(ValueError, match="needs teacher="):
        fused_loss(hidden, weight, labels, objective)
    with_grad = fused_loss(hidden, weight, labels, objective, chunk_size=5, teacher=(h_t, w_t, None))
    with torch.no_grad():
        without = fused_loss(hidden, weight, labels, objective, chunk_size=5, teacher=(h_t, w_t, None))
    assert float(without.loss) == float(with_grad.loss.detach())
