"""Property tests over shapes, masks and dtypes (hypothesis)."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from objectives_reference import emo_value, per_token

from emotune.objectives import build_objective

NAMES = ["mle", "tailr", "mixce", "emo", "emo2", "demd"]


@st.composite
def problems(draw):
    B = draw(st.integers(1, 3))
    T = draw(st.integers(1, 6))
    V = draw(st.integers(2, 12))
    H = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64) * draw(st.sampled_from([0.1, 1.0, 5.0]))
    labels = torch.randint(0, V, (B, T), generator=g)
    mask = torch.rand(B, T, generator=g) < draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
    labels[mask] = -100
    E = torch.randn(V, H, generator=g, dtype=torch.float64)
    return logits, labels, E


@settings(max_examples=60, deadline=None)
@given(problems(), st.sampled_from(NAMES))
def test_any_shape_and_mask_gives_finite_loss_grad_and_token_count(problem, name):
    logits, labels, E = problem
    logits = logits.clone().requires_grad_(True)
    out = build_objective(name, {}, cost=E)(logits, labels)
    out.loss.backward()
    n = int((labels[:, 1:] != -100).sum())
    assert int(out.n_tokens) == n
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert torch.isfinite(logits.grad).all()
    assert torch.all(logits.grad[:, -1] == 0)
    # Rows whose next label is ignored get exactly zero gradient.
    ignored = torch.zeros_like(labels, dtype=torch.bool)
    ignored[:, :-1] = labels[:, 1:] == -100
    assert torch.all(logits.grad[ignored] == 0)
    if n == 0:
        assert out.loss.item() == 0.0


@settings(max_examples=40, deadline=None)
@given(problems(), st.sampled_from(["emo1", "emo2", "demd"]), st.sampled_from(["token", "batch"]))
def test_emo_matches_reference_everywhere(problem, variant, weighting):
    logits, labels, E = problem
    out = build_objective("emo", {"variant": variant, "weighting": weighting}, cost=E)(logits, labels)
    want = emo_value(logits.numpy(), labels.numpy(), E.numpy(), variant, None, weighting)
    assert abs(out.loss.item() - want) <= 1e-9 * max(1.0, abs(want))
    rows = per_token(logits.numpy(), labels.numpy(), E.numpy())
    if rows:
        assert abs(out.demd.item() - np.mean([r[1] for r in rows])) < 1e-10


@settings(max_examples=30, deadline=None)
@given(problems(), st.sampled_from(NAMES), st.sampled_from([torch.float16, torch.bfloat16, torch.float32]))
def test_low_precision_inputs_compute_in_float32(problem, name, dtype):
    logits, labels, E = problem
    out = build_objective(name, {}, cost=E.float())(logits.to(dtype), labels)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
