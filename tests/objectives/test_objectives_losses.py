"""MLE, TaiLr, MixCE and EMO against float64 references (docs/objectives.md)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from objectives_reference import cost_matrix, emo_value, per_token, softmax

from emotune.objectives import build_objective, emo, mixce, mle, tailr
from emotune.objectives.losses import mixce_weight, tailr_weight


def batch(B=3, T=6, V=11, H=4, seed=0, dtype=torch.float64, masked=True):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, T, V, generator=g, dtype=torch.float64) * 2).to(dtype)
    labels = torch.randint(0, V, (B, T), generator=g)
    if masked:
        labels[0, :3] = -100
        labels[B - 1, -1] = -100
    E = torch.randn(V, H, generator=g, dtype=torch.float64)
    return logits, labels, E


def test_mle_equals_torch_cross_entropy_shifted():
    logits, labels, _ = batch()
    want = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert mle(logits, labels).loss.item() == pytest.approx(want.item(), abs=1e-12)


def test_tailr_and_mixce_weights_match_spec_numbers():
    p = torch.tensor([1e-4, 0.01, 0.3, 0.9], dtype=torch.float64)
    np.testing.assert_allclose(tailr_weight(p, 0.1, 0.2).numpy(), [0.2, 0.2, 0.8108, 0.9890], atol=1e-4)
    np.testing.assert_allclose(mixce_weight(p, 0.5).numpy(), [0.50005, 0.505, 0.65, 0.95], atol=1e-12)


@pytest.mark.parametrize("gamma,min_w", [(1e-7, 0.2), (0.1, 0.3), (0.8, 0.25)])
def test_tailr_value_and_gradient(gamma, min_w):
    logits, labels, _ = batch()
    logits.requires_grad_(True)
    out = tailr(logits, labels, gamma=gamma, min_weight=min_w)
    rows = per_token(logits.detach().numpy(), labels.numpy())
    w = [min(max(p / (gamma + (1 - gamma) * p), min_w), 1.0) for _, _, p in rows]
    assert out.loss.item() == pytest.approx(np.mean([wi * m for wi, (m, _, _) in zip(w, rows)]), abs=1e-12)
    assert out.weight.item() == pytest.approx(np.mean(w), abs=1e-12)
    # The weight is a constant for the gradient: d loss = mean(w_t * d mle_t).
    out.loss.backward()
    g_ref = torch.autograd.grad(
        (torch.tensor(w) * _per_token_mle(logits, labels)).mean(), logits)[0]
    assert torch.allclose(logits.grad, g_ref, atol=1e-12)


def _per_token_mle(logits, labels):
    z, y = logits[:, :-1], labels[:, 1:]
    keep = y != -100
    return F.cross_entropy(z[keep], y[keep], reduction="none")


@pytest.mark.parametrize("eta", [0.5, 0.8, 1.0])
def test_mixce_value_and_eta_one_is_mle(eta):
    logits, labels, _ = batch()
    rows = per_token(logits.numpy(), labels.numpy())
    want = np.mean([(eta + (1 - eta) * p) * m for m, _, p in rows])
    assert mixce(logits, labels, eta=eta).loss.item() == pytest.approx(want, abs=1e-12)
    if eta == 1.0:
        assert mixce(logits, labels, eta=1.0).loss.item() == pytest.approx(mle(logits, labels).loss.item(), abs=1e-12)


@pytest.mark.parametrize("variant", ["emo1", "emo2", "demd"])
@pytest.mark.parametrize("weighting", ["token", "batch"])
@pytest.mark.parametrize("clamp", [None, 3.0])
@pytest.mark.parametrize("gt_detach", [False, True])
def test_emo_value_matches_reference(variant, weighting, clamp, gt_detach):
    logits, labels, E = batch()
    out = emo(logits, labels, E, variant=variant, weighting=weighting, ratio_clamp=clamp, gt_detach=gt_detach)
    want = emo_value(logits.numpy(), labels.numpy(), E.numpy(), variant, clamp, weighting, gt_detach)
    assert out.loss.item() == pytest.approx(want, abs=1e-10)
    assert out.ce.item() == pytest.approx(mle(logits, labels).loss.item(), abs=1e-12)


def test_case3_emo1_value_is_ce_and_gradient_is_weighted_mix():
    logits, labels, E = batch()
    logits.requires_grad_(True)
    out = emo(logits, labels, E)
    assert out.loss.item() == pytest.approx(mle(logits, labels).loss.item(), abs=1e-12)
    out.loss.backward()
    # Reference gradient: mean_t 0.5 * (∇mle_t + (mle_t/demd_t) ∇demd_t) with explicit closed forms.
    C = cost_matrix(E.numpy())
    n = int((labels[:, 1:] != -100).sum())
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            y = int(labels[b, t + 1])
            if y == -100:
                continue
            q = softmax(logits[b, t].detach().numpy())
            grad_mle = q - np.eye(len(q))[y]
            c = 1.0 - C[:, y]
            grad_demd = q * (q @ c - c)
            ratio = -np.log(q[y]) / (q @ C[:, y])
            np.testing.assert_allclose(logits.grad[b, t].numpy(), 0.5 * (grad_mle + ratio * grad_demd) / n, atol=1e-12)


def test_case3_token_and_batch_weighting_differ_on_crafted_two_token_batch():
    # Token 1 confident and right (small mle, small demd), token 2 wrong (large mle, demd near 1):
    # the per-token ratios differ a lot, so the two weightings produce different gradients.
    V = 4
    logits = torch.zeros(1, 3, V, dtype=torch.float64)
    logits[0, 0] = torch.tensor([6.0, 0.0, 0.0, 0.0])
    logits[0, 1] = torch.tensor([0.0, 0.0, 0.0, 4.0])
    labels = torch.tensor([[-100, 0, 1]])
    E = torch.eye(V, dtype=torch.float64)
    grads = {}
    for w in ("token", "batch"):
        lg = logits.clone().requires_grad_(True)
        emo(lg, labels, E, weighting=w).loss.backward()
        grads[w] = lg.grad
    assert not torch.allclose(grads["token"], grads["batch"], atol=1e-4)


def test_case4_emo2_value_is_twice_mean_demd_and_clamp_caps_at_three():
    logits, labels, E = batch()
    out = emo(logits, labels, E, variant="emo2")
    assert out.loss.item() == pytest.approx(2 * out.demd.item(), abs=1e-12)
    # EMO-1 clamped: with an orthonormal cost demd = 1 - q_y, so on a near-uniform V=1000 softmax
    # mle/demd = log(1000)/0.999 ≈ 6.9 > 3: the clamp must cap the weight at exactly 3.
    V = 1000
    flat = torch.zeros(1, 2, V, dtype=torch.float64, requires_grad=True)
    lab = torch.tensor([[0, 5]])
    eye = torch.eye(V, dtype=torch.float64)
    clamped = emo(flat, lab, eye, ratio_clamp=3.0)
    assert clamped.weight.item() == 3.0
    assert clamped.loss.item() == pytest.approx(0.5 * (np.log(V) + 3.0 * (1 - 1 / V)), abs=1e-12)


def test_case5_last_logit_and_first_label_never_used_and_empty_batch():
    logits, labels, E = batch(masked=False)
    base = emo(logits, labels, E).loss.item()
    logits2, labels2 = logits.clone(), labels.clone()
    logits2[:, -1] = torch.randn_like(logits2[:, -1]) * 100
    labels2[:, 0] = (labels2[:, 0] + 1) % 11
    for fn in (lambda l, y: emo(l, y, E), mle, tailr, mixce):
        assert fn(logits2, labels2).loss.item() == pytest.approx(fn(logits, labels).loss.item(), abs=1e-12)
    assert emo(logits2, labels2, E).loss.item() == pytest.approx(base, abs=1e-12)

    empty = torch.full_like(labels, -100)
    for name in ("mle", "tailr", "mixce", "emo", "emo2", "demd"):
        for weighting in (["token", "batch"] if name.startswith(("emo", "demd")) else ["token"]):
            params = {"weighting": weighting} if name.startswith(("emo", "demd")) else {}
            lg = logits.clone().requires_grad_(True)
            out = build_objective(name, params, cost=E)(lg, empty)
            out.loss.backward()
            assert out.loss.item() == 0.0 and int(out.n_tokens) == 0
            assert torch.isfinite(lg.grad).all() and torch.all(lg.grad == 0)


@pytest.mark.parametrize("name", ["mle", "demd"])
def test_gradcheck_float64(name):
    """The fully differentiable objectives against finite differences."""
    logits, labels, E = batch(B=2, T=4, V=5, H=3)
    logits.requires_grad_(True)
    objective = build_objective(name, {}, cost=E)
    assert torch.autograd.gradcheck(lambda l: objective(l, labels).loss, (logits,))


@pytest.mark.parametrize("name,params", [("tailr", {}), ("mixce", {}), ("emo", {}), ("emo2", {}),
                                         ("emo", {"ratio_clamp": 3.0}), ("emo", {"gt_detach": True})])
def test_gradcheck_with_stop_gradient_weights_frozen(name, params):
    """Objectives with sg(.) weights: their gradient equals finite differences of the same loss with
    the weights frozen at the evaluation point (the weights come from the float64 reference)."""
    logits, labels, E = batch(B=2, T=4, V=5, H=3)
    rows = per_token(logits.numpy(), labels.numpy(), E.numpy(), gt_detach=params.get("gt_detach", False))
    mle_r = np.array([r[0] for r in rows]); demd_r = np.array([r[1] for r in rows]); p = np.array([r[2] for r in rows])
    clamp = params.get("ratio_clamp") or np.inf
    C = torch.tensor(cost_matrix(E.numpy()))
    z_keep = labels[:, 1:] != -100
    y = labels[:, 1:][z_keep]

    def frozen(l):
        z = l[:, :-1][z_keep]
        m = F.cross_entropy(z, y, reduction="none")
        d = (torch.softmax(z, -1) * C[:, y].T).sum(-1)
        if name == "tailr":
            return (torch.tensor(np.clip(p / (0.1 + 0.9 * p), 0.2, 1.0)) * m).mean()
        if name == "mixce":
            return (torch.tensor(0.8 + 0.2 * p) * m).mean()
        if name == "emo":
            return (0.5 * (m + torch.tensor(np.minimum(mle_r / demd_r, clamp)) * d)).mean()
        return (torch.tensor(demd_r / mle_r) * m + d).mean()

    logits.requires_grad_(True)
    ours = torch.autograd.grad(build_objective(name, params, cost=E)(logits, labels).loss, logits)[0]
    assert torch.autograd.gradcheck(frozen, (logits,))
    assert torch.allclose(ours, torch.autograd.grad(frozen(logits), logits)[0], atol=1e-12)


@pytest.mark.parametrize("name", ["mle", "tailr", "mixce", "emo", "emo2", "demd"])
def test_case8_bf16_close_to_float64_and_fp16_ignored_rows_no_nan(name):
    logits, labels, E = batch(V=64, H=16, T=8)
    objective = build_objective(name, {}, cost=E.float())
    ref = build_objective(name, {}, cost=E)(logits, labels)
    bf = objective(logits.to(torch.bfloat16), labels)
    assert bf.loss.dtype == torch.float32
    # The bf16 rounding of the logits themselves (~0.4% of |z| ≤ 8) bounds the agreement.
    assert bf.loss.item() == pytest.approx(ref.loss.item(), rel=3e-3, abs=3e-3)

    half = logits.to(torch.float16).clone()
    half[labels.roll(-1, dims=1) == -100] = float("inf")  # garbage in positions that predict ignored labels
    half.requires_grad_(True)
    out = objective(half, labels)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(half.grad).all()


@pytest.mark.parametrize("name", ["mle", "tailr", "mixce", "emo", "emo2", "demd"])
def test_case9_two_micro_batches_accumulate_to_one_double_batch(name):
    logits, labels, E = batch(B=4, masked=False)
    objective = build_objective(name, {}, cost=E)
    full = logits.clone().requires_grad_(True)
    objective(full, labels).loss.backward()
    acc = logits.clone().requires_grad_(True)
    for part in (slice(0, 2), slice(2, 4)):  # equal target-token counts
        (objective(acc[part], labels[part]).loss / 2).backward()
    assert torch.allclose(full.grad, acc.grad, atol=1e-12)
    # With HF's num_items_in_batch the counts need not be equal.
    labels_u = labels.clone(); labels_u[0, 1:4] = -100
    n = int((labels_u[:, 1:] != -100).sum())
    full.grad = None
    objective(full, labels_u).loss.backward()
    acc2 = logits.clone().requires_grad_(True)
    for part in (slice(0, 1), slice(1, 4)):
        objective(acc2[part], labels_u[part], num_items_in_batch=n).loss.backward()
    assert torch.allclose(full.grad, acc2.grad, atol=1e-12)


def test_stable_ce_for_confident_tokens():
    # lse - z_y cancels to 0 in float32 here; the stable form keeps a positive, accurate value.
    logits = torch.zeros(1, 2, 3)
    logits[0, 0, 1] = 30.0
    labels = torch.tensor([[0, 1]])
    out = mle(logits, labels)
    assert out.loss.item() > 0
    assert out.loss.item() == pytest.approx(2 * np.exp(-30.0), rel=1e-5)
    e2 = emo(logits, labels, torch.eye(3), variant="emo2")
    assert torch.isfinite(e2.loss) and e2.weight.item() >= 0

