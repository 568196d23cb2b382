"""DEMD and the cost embedding against float64 references and an exact OT solver (docs/objectives.md)."""

import numpy as np
import ot
import pytest
import torch
from objectives_reference import cost_matrix, softmax

from emotune.objectives import CostEmbedding, CostEmbeddingError, demd_dense, demd_one_hot, emo, normalize_rows

torch.manual_seed(0)


def rand_problem(n=6, V=9, H=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, V, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, V, (n,), generator=g)
    E = torch.randn(V, H, generator=g, dtype=torch.float64)
    return z, y, E


def test_case1_demd_equals_sum_q_cost_and_QCP():
    z, y, E = rand_problem()
    q = torch.softmax(z, -1)
    got = demd_one_hot(q, y, normalize_rows(E))
    C = cost_matrix(E.numpy())
    for t in range(len(y)):
        qt = softmax(z[t].numpy())
        P = np.zeros(len(qt)); P[int(y[t])] = 1.0
        assert got[t].item() == pytest.approx(float(qt @ C[:, int(y[t])]), abs=1e-12)
        assert got[t].item() == pytest.approx(float(qt @ C @ P), abs=1e-12)  # Qᵀ C P
    assert torch.all(got >= -1e-12) and torch.all(got <= 2 + 1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_case1_demd_vs_exact_emd_from_pot(seed):
    """One-hot target: the only feasible plan is q ⊗ δ_y, so DEMD equals the exact EMD.
    Dense target: the independent plan q ⊗ p is feasible, so Qᵀ C P ≥ EMD (strict in general)."""
    rng = np.random.default_rng(seed)
    V, H = 7, 4
    E = rng.normal(size=(V, H))
    C = cost_matrix(E)
    q = softmax(rng.normal(size=V) * 2)
    y = int(rng.integers(V))
    onehot = np.zeros(V); onehot[y] = 1.0
    exact = ot.emd2(q, onehot, C)
    ours = demd_one_hot(torch.tensor(q)[None], torch.tensor([y]), normalize_rows(torch.tensor(E))).item()
    assert ours == pytest.approx(exact, abs=1e-10)

    p = softmax(rng.normal(size=V) * 2)
    exact_dense = ot.emd2(q, p, C)
    independent_plan = float(q @ C @ p)
    assert independent_plan >= exact_dense - 1e-10
    assert independent_plan > exact_dense + 1e-6  # not tight for a dense target


def test_generalised_demd_eq15_against_explicit_matrix():
    rng = np.random.default_rng(1)
    V, H, n = 8, 3, 5
    E = rng.normal(size=(V, H))
    C = cost_matrix(E)
    q = np.stack([softmax(rng.normal(size=V)) for _ in range(n)])
    p = np.stack([softmax(rng.normal(size=V)) for _ in range(n)])
    got = demd_dense(torch.tensor(q), torch.tensor(p), normalize_rows(torch.tensor(E))).numpy()
    want = np.array([np.abs(q[i] - p[i]) @ C @ p[i] for i in range(n)])
    np.testing.assert_allclose(got, want, atol=1e-12)
    # With a one-hot target it reduces to the one-hot DEMD.
    y = torch.tensor(rng.integers(V, size=n))
    onehot = torch.nn.functional.one_hot(y, V).double()
    e_hat = normalize_rows(torch.tensor(E))
    np.testing.assert_allclose(demd_dense(torch.tensor(q), onehot, e_hat).numpy(),
                               demd_one_hot(torch.tensor(q), y, e_hat).numpy(), atol=1e-12)


def test_case2_logit_gradient_closed_form_and_masked_rows():
    z, y, E = rand_problem(n=1, V=10)
    B, T, V = 2, 4, 10
    logits = torch.randn(B, T, V, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, V, (B, T))
    labels[1, 2] = -100  # position (1,1) is masked
    out = emo(logits, labels, E, variant="demd")
    out.loss.backward()
    C = cost_matrix(E.numpy())
    n = int((labels[:, 1:] != -100).sum())
    for b in range(B):
        for t in range(T - 1):
            y_t = int(labels[b, t + 1])
            g = logits.grad[b, t].numpy()
            if y_t == -100:
                assert np.all(g == 0.0)
                continue
            q = softmax(logits[b, t].detach().numpy())
            c = 1.0 - C[:, y_t]  # c_k = cos(e_k, e_y)
            np.testing.assert_allclose(g, q * (q @ c - c) / n, atol=1e-12)
    assert torch.all(logits.grad[:, -1] == 0)  # the last position predicts nothing


def test_case6_row_scaling_invariance_no_grad_to_E_and_hidden_size_free():
    z, y, E = rand_problem(V=9, H=3)
    logits = torch.randn(2, 5, 9, dtype=torch.float64)
    labels = torch.randint(0, 9, (2, 5))
    E_req = E.clone().requires_grad_(True)
    base = emo(logits, labels, E_req, variant="demd").loss
    scaled = E.clone(); scaled[3] *= 7.5; scaled[0] *= 0.01
    assert emo(logits, labels, scaled, variant="demd").loss.item() == pytest.approx(base.item(), abs=1e-12)
    assert not base.requires_grad  # E is detached: no path to it at all
    for H2 in (1, 2, 17):  # H' need not equal the model's hidden size
        emo(logits, labels, torch.randn(9, H2, dtype=torch.float64))
    with pytest.raises(CostEmbeddingError, match="9 tokens"):
        emo(logits, labels, torch.randn(8, 3))


def test_case6_cost_embedding_sources():
    model = torch.nn.Sequential()
    model.get_output_embeddings = lambda: head
    head = torch.nn.Linear(4, 6, bias=False)
    frozen = CostEmbedding.frozen(model)
    before = frozen.matrix().clone()
    with torch.no_grad():
        head.weight.add_(1.0)
    assert torch.equal(frozen.matrix(), before)  # a copy, taken once
    adaptive = CostEmbedding.adaptive(model)
    np.testing.assert_allclose(adaptive.matrix().numpy(), normalize_rows(head.weight).numpy())
    assert not adaptive.matrix().requires_grad
    with pytest.raises(CostEmbeddingError, match="6 rows but the model's vocabulary has 7"):
        CostEmbedding.external(head.weight, vocab_size=7)
    assert CostEmbedding.external(torch.randn(6, 11), vocab_size=6).matrix().shape == (6, 11)


def test_case7_orthonormal_and_identical_rows():
    V = 6
    logits = torch.randn(1, 4, V, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, V, (1, 4))
    q = torch.softmax(logits[0, :-1], -1)
    y = labels[0, 1:]
    d = demd_one_hot(q, y, normalize_rows(torch.eye(V, dtype=torch.float64)))
    np.testing.assert_allclose(d.detach().numpy(), (1 - q.gather(-1, y[:, None]).squeeze(-1)).detach().numpy(), atol=1e-12)

    same = torch.ones(V, 3, dtype=torch.float64)
    out = emo(logits, labels, same, variant="demd")
    assert out.loss.item() == pytest.approx(0.0, abs=1e-12)
    out.loss.backward()
    assert torch.allclose(logits.grad, torch.zeros_like(logits.grad), atol=1e-12)


def test_zero_norm_rows_give_cost_one_not_nan():
    E = torch.randn(5, 3)
    E[2] = 0.0
    e_hat = normalize_rows(E)
    assert torch.isfinite(e_hat).all() and torch.all(e_hat[2] == 0)
    logits = torch.randn(1, 3, 5, requires_grad=True)
    labels = torch.tensor([[0, 2, 2]])
    out = emo(logits, labels, E)
    out.loss.backward()
    assert out.demd.item() == pytest.approx(1.0, abs=1e-6)  # every token costs 1 to a zero-row target
    assert torch.isfinite(logits.grad).all()
