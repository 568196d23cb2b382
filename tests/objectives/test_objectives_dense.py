"""Dense targets (a teacher's distribution, cost-smoothed labels): the generalised DEMD against the exact EMD from
POT, its equality cases and gradients, the KD baselines against float64 formulas, and the registry's checks."""

import numpy as np
import ot
import pytest
import torch

from emotune.errors import EmotuneError
from emotune.objectives import CostEmbedding, build_objective
from emotune.objectives.cost import normalize_rows
from emotune.objectives.demd import demd_dense, demd_one_hot
from emotune.objectives.dense import dense_terms
from emotune.objectives.registry import resolve

DENSE = [("emo", {"target": "teacher"}), ("emo", {"target": "teacher", "variant": "emo2"}),
         ("emo", {"target": "teacher", "variant": "demd", "temperature": 2.0}), ("emo", {"target": "smoothed"}),
         ("emo", {"target": "teacher", "weighting": "batch", "ratio_clamp": 3.0}), ("kd_forward", {}),
         ("kd_forward", {"temperature": 0.7, "top_k": 4}), ("kd_reverse", {"temperature": 2.0}),
         ("kd_forward", {"target": "smoothed", "epsilon": 0.3, "tau": 0.5}), ("kd_reverse", {"target": "smoothed"})]
DENSE_IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in p.items())}" for n, p in DENSE]


def problem(B=2, T=7, V=11, H_cost=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, T, V, dtype=torch.float64, generator=g).requires_grad_(True)
    zt = torch.randn(B, T, V, dtype=torch.float64, generator=g) * 1.5
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :3] = -100
    E = torch.randn(V, H_cost, dtype=torch.float64, generator=g)
    return z, zt, labels, E


def kernel(q_logits, p, e_hat, likelihood="forward_kl", demd=True):
    """Per-token (ce, likelihood, demd) of the shared kernel on float64 rows."""
    y = torch.zeros(q_logits.shape[0], dtype=torch.long)
    ce, lik, d, _, _ = dense_terms(q_logits.clone(), p.clone(), torch.empty_like(p), y, e_hat, likelihood, demd)
    return ce, lik, d


@pytest.mark.parametrize("seed", range(4))
def test_generalised_demd_bounds_the_exact_emd(seed):
    g = torch.Generator().manual_seed(seed)
    V = 9
    E = torch.randn(V, 3, dtype=torch.float64, generator=g)
    e_hat = normalize_rows(E)
    C = (1.0 - e_hat @ e_hat.T).clamp_min(0.0)
    z = torch.randn(6, V, dtype=torch.float64, generator=g) * 2
    p = torch.softmax(torch.randn(6, V, dtype=torch.float64, generator=g) * 2, -1)
    _, _, d = kernel(z, p, e_hat)
    q = torch.softmax(z, -1)
    assert torch.allclose(d, demd_dense(q, p, e_hat), rtol=1e-12, atol=1e-14)  # Eq. 15 as written
    for i in range(6):
        exact = ot.emd2(q[i].numpy(), p[i].numpy(), C.numpy())
        assert float(d[i]) >= exact - 1e-12
    assert float(d.max()) > 0


def test_one_hot_target_is_tight_and_equals_the_one_hot_demd():
    g = torch.Generator().manual_seed(1)
    V = 8
    e_hat = normalize_rows(torch.randn(V, 3, dtype=torch.float64, generator=g))
    C = (1.0 - e_hat @ e_hat.T).clamp_min(0.0)
    C.fill_diagonal_(0.0)
    z = torch.randn(5, V, dtype=torch.float64, generator=g)
    y = torch.randint(0, V, (5,), generator=g)
    p = torch.nn.functional.one_hot(y, V).double()
    ce, lik, d = kernel(z, p, e_hat)
    q = torch.softmax(z, -1)
    assert torch.allclose(d, demd_one_hot(q, y, e_hat), atol=1e-12)
    assert torch.allclose(lik, -torch.log_softmax(z, -1).gather(-1, y[:, None]).squeeze(-1), atol=1e-12)  # KL = CE
    for i in range(5):
        assert float(d[i]) == pytest.approx(ot.emd2(q[i].numpy(), p[i].numpy(), C.numpy()), abs=1e-9)


def test_p_equal_q_gives_zero():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(4, 10, dtype=torch.float64, generator=g)
    p = torch.softmax(z, -1)
    _, lik, d = kernel(z, p, normalize_rows(torch.randn(10, 3, dtype=torch.float64, generator=g)))
    assert float(d.abs().max()) < 1e-15 and float(lik.abs().max()) < 1e-14


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_teacher_equal_to_student_gives_zero_demd_gradient(dtype):
    z, _, labels, E = problem()
    z = z.detach().to(dtype).requires_grad_(True)
    for name, params in [("emo", {"target": "teacher", "variant": "demd"}), ("kd_forward", {}), ("kd_reverse", {})]:
        out = build_objective(name, params, CostEmbedding(E.to(dtype)))(z, labels, teacher_logits=z.detach().clone())
        (grad,) = torch.autograd.grad(out.loss, z)
        assert float(out.loss.detach()) == pytest.approx(0.0, abs=1e-6 if dtype == torch.float32 else 1e-14)
        if name == "emo":  # q == p bit for bit: the |q - p| kink's subgradient is exactly 0
            assert float(grad.abs().max()) == 0.0
        else:
            assert float(grad.abs().max()) < (1e-7 if dtype == torch.float32 else 1e-16)


def _reference_p(zt, labels, E, params):
    """P in float64 straight from the definitions, for the N target rows."""
    keep = labels[:, 1:] != -100
    y = labels[:, 1:][keep]
    if params.get("target", "teacher") == "teacher":
        p = torch.softmax(zt[:, :-1][keep] / params.get("temperature", 1.0), -1)
        k = params.get("top_k")
        if k is not None:
            top = p.topk(k, -1)
            p = torch.zeros_like(p).scatter(-1, top.indices, top.values / top.values.sum(-1, keepdim=True))
        return p, keep
    e_hat = normalize_rows(E)
    cost = 1.0 - e_hat[y] @ e_hat.T
    eps, tau = params.get("epsilon", 0.1), params.get("tau", 0.1)
    return (1 - eps) * torch.nn.functional.one_hot(y, E.shape[0]).double() + eps * torch.softmax(-cost / tau, -1), keep


@pytest.mark.parametrize("name,params", [c for c in DENSE if c[0] != "emo"], ids=[i for i, c in zip(DENSE_IDS, DENSE) if c[0] != "emo"])
def test_kd_losses_match_float64_formulas(name, params):
    z, zt, labels, E = problem()
    out = build_objective(name, params, CostEmbedding(E))(z, labels, teacher_logits=zt)
    p, keep = _reference_p(zt, labels, E, params)
    logq = torch.log_softmax(z[:, :-1][keep], -1)
    logp = torch.where(p > 0, p, torch.ones_like(p)).log()
    kl = (p * (logp - logq)).sum(-1) if name == "kd_forward" else (logq.exp() * (logq - logp)).sum(-1)
    assert float(out.loss) == pytest.approx(float(kl.mean()), rel=1e-12)
    (g_out,) = torch.autograd.grad(out.loss, z)
    (g_ref,) = torch.autograd.grad(kl.mean(), z)
    assert torch.allclose(g_out, g_ref, atol=1e-14)
    assert float(out.ce) == pytest.approx(float(-logq.gather(-1, labels[:, 1:][keep][:, None]).mean()), rel=1e-12)


@pytest.mark.parametrize("variant", ["emo1", "emo2", "demd"])
@pytest.mark.parametrize("target", ["teacher", "smoothed"])
def test_dense_emo_matches_float64_formula(variant, target):
    z, zt, labels, E = problem()
    params = {"target": target, "variant": variant}
    out = build_objective("emo", params, CostEmbedding(E))(z, labels, teacher_logits=zt)
    p, keep = _reference_p(zt, labels, E, params)
    logq = torch.log_softmax(z[:, :-1][keep], -1)
    kl = (p * (torch.where(p > 0, p, torch.ones_like(p)).log() - logq)).sum(-1)
    d = demd_dense(logq.exp(), p, normalize_rows(E))
    if variant == "emo1":
        per = 0.5 * (kl + (kl / d).detach() * d)
    elif variant == "emo2":
        per = (d / kl).detach() * kl + d
    else:
        per = d
    assert float(out.loss) == pytest.approx(float(per.mean()), rel=1e-12)
    assert float(out.demd) == pytest.approx(float(d.mean()), rel=1e-12)
    (g_out,) = torch.autograd.grad(out.loss, z)
    (g_ref,) = torch.autograd.grad(per.mean(), z)
    assert torch.allclose(g_out, g_ref, atol=1e-13)


def test_smoothed_with_zero_epsilon_is_the_one_hot_objective():
    z, _, labels, E = problem()
    for variant in ("emo1", "emo2", "demd"):
        dense = build_objective("emo", {"target": "smoothed", "epsilon": 0.0, "variant": variant}, CostEmbedding(E))(z, labels)
        onehot = build_objective("emo", {"variant": variant}, CostEmbedding(E))(z, labels)
        assert float(dense.loss) == pytest.approx(float(onehot.loss), rel=1e-10)
        g1, g2 = (torch.autograd.grad(o.loss, z)[0] for o in (dense, onehot))
        assert torch.allclose(g1, g2, atol=1e-12)


@pytest.mark.parametrize("name,params", DENSE[:4] + DENSE[7:8], ids=DENSE_IDS[:4] + DENSE_IDS[7:8])
def test_gradcheck(name, params):
    z, zt, labels, E = problem(B=2, T=4, V=6)
    # EMO-1/2's stop-gradient weights are not the finite-difference gradient: check the (generalised) DEMD alone
    objective = build_objective(name, {**params, "variant": "demd"} if name == "emo" else params, CostEmbedding(E))
    assert torch.autograd.gradcheck(lambda x: objective(x, labels, teacher_logits=zt).loss, (z,))


def test_ignored_tokens_contribute_nothing():
    z, zt, labels, E = problem()
    objective = build_objective("emo", {"target": "teacher"}, CostEmbedding(E))
    out = objective(z, labels, teacher_logits=zt)
    zt2, z2 = zt.clone(), z.detach().clone()
    zt2[0, :2] = 1e4  # rows predicting ignored labels[0, 1:3], and the last position
    zt2[:, -1] = float("nan")
    z2[0, :2] = 1e4
    z2 = z2.requires_grad_(True)
    out2 = objective(z2, labels, teacher_logits=zt2)
    assert float(out2.loss) == float(out.loss)
    (g,) = torch.autograd.grad(out2.loss, z2)
    assert float(g[0, :2].abs().max()) == 0.0 and float(g[:, -1].abs().max()) == 0.0
    none = objective(z, torch.full_like(labels, -100), teacher_logits=zt)
    (g0,) = torch.autograd.grad(none.loss, z)
    assert float(none.loss) == 0.0 and bool(torch.isfinite(g0).all()) and float(g0.abs().max()) == 0.0


def test_float32_logits_agree_with_float64():
    z, zt, labels, E = problem(V=50)
    for name, params in DENSE:
        obj64, obj32 = build_objective(name, params, CostEmbedding(E)), build_objective(name, params, CostEmbedding(E.float()))
        a = obj64(z, labels, teacher_logits=zt)
        b = obj32(z.detach().float(), labels, teacher_logits=zt.float())
        assert float(b.loss) == pytest.approx(float(a.loss), rel=1e-5, abs=1e-6), name


def test_registry_checks_target_options():
    assert resolve("emo")[1] == {"variant": "emo1", "ratio_clamp": None, "weighting": "token", "gt_detach": False}
    assert resolve("kd")[1] == {"target": "teacher", "temperature": 1.0, "top_k": None}
    assert resolve("emo", {"target": "smoothed"})[1]["epsilon"] == 0.1
    for params, match in [({"target": "soft"}, "target='soft' is invalid"), ({"target": "teacher", "epsilon": 0.2},
                          "epsilon is an option of target 'smoothed'"), ({"top_k": 3}, "top_k is an option of target 'teacher'"),
                          ({"target": "teacher", "gt_detach": True}, "gt_detach=true is for the one-hot target"),
                          ({"target": "teacher", "temperature": 0.0}, "temperature=0.0 is invalid"),
                          ({"target": "teacher", "top_k": 0}, "top_k=0 is invalid"),
                          ({"target": "smoothed", "epsilon": 1.5}, "epsilon=1.5 is invalid")]:
        with pytest.raises(EmotuneError, match=match):
            resolve("emo", params)
    with pytest.raises(EmotuneError, match="reverse KL is infinite"):
        resolve("kd_reverse", {"top_k": 5})
    with pytest.raises(EmotuneError, match="target='onehot' is invalid"):
        resolve("kd_forward", {"target": "onehot"})
    with pytest.raises(EmotuneError, match="needs a cost embedding"):
        build_objective("kd_forward", {"target": "smoothed"})
    assert build_objective("kd_forward").cost is None and not build_objective("kd_forward").needs_cost
    with pytest.raises(ValueError, match="needs teacher_logits"):
        z, _, labels, _ = problem()
        build_objective("kd")(z, labels)
    assert np.isfinite(float(build_objective("kd")(z, labels, teacher_logits=z.detach()).loss))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits_run_in_float32(dtype):
    z, zt, labels, E = problem(V=50)
    zl, ztl = z.detach().to(dtype).requires_grad_(True), zt.to(dtype)
    for name, params in DENSE:
        want = build_objective(name, params, CostEmbedding(E))(zl.detach().double(), labels, teacher_logits=ztl.double())
        got = build_objective(name, params, CostEmbedding(E.float()))(zl, labels, teacher_logits=ztl)
        (g,) = torch.autograd.grad(got.loss, zl)
        assert got.loss.dtype == torch.float32 and g.dtype == dtype and bool(torch.isfinite(g).all())
        assert float(got.loss) == pytest.approx(float(want.loss), rel=1e-5, abs=1e-6), name
