"""The PPL scorer: shared-prefix and full-prompt NLLs against an independent float64 reference, and the
OpenICL / continuation rules against their formulas."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from eval_builders import TEMPLATES, TEST_TEXTS, TRAIN_TEXTS, build_llama, build_tokenizer  # noqa: F401

from emotune.errors import EmotuneError
from emotune.eval.icl.scorer import argmin_first, common_prefix_len, naive_token_nlls, rule_scores, score_groups, shared_token_nlls


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    tok = build_tokenizer(d)
    model = build_llama(None, len(tok), seed=1)
    return tok, model, copy.deepcopy(model).double()


def reference_nlls(model64, seq: list[int]) -> np.ndarray:
    """float64, one unpadded sequence at a time, no cache: -log softmax(logits[t-1])[token t], t = 1..T-1."""
    with torch.no_grad():
        logits = model64(input_ids=torch.tensor([seq])).logits[0].double()
    logp = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    return np.array([-float(logp[t - 1, seq[t]]) for t in range(1, len(seq))])


def icl_groups(tok, n_labels: int, n_demos: int = 4, n_tests: int = 5) -> list[list[list[int]]]:
    tpl = TEMPLATES[n_labels]
    groups = []
    for k, text in enumerate(TEST_TEXTS[:n_tests]):
        demos = TRAIN_TEXTS[k : k + n_demos + k % 3]  # unequal prefix lengths inside a batch
        ice = "\n".join(tpl[i % n_labels].replace("<X>", d) for i, d in enumerate(demos)) + "\n"
        groups.append([tok(ice + tpl[lab].replace("<X>", text))["input_ids"] for lab in tpl])
    return groups


SHAPES = [2, 4, 6]


@pytest.mark.parametrize("n_labels", SHAPES)
@pytest.mark.parametrize("batch_size", [1, 3])
def test_shared_prefix_equals_float64_reference(tiny, n_labels, batch_size):
    tok, model, model64 = tiny
    groups = icl_groups(tok, n_labels)
    # the shapes this test is about: labels of unequal token length sharing leading tokens ("It is about")
    lens = {len(s) for s in groups[0]}
    assert len(lens) > 1 or n_labels == 2
    shared = shared_token_nlls(model, groups, batch_size=batch_size)
    naive = naive_token_nlls(model, [s for g in groups for s in g], batch_size=batch_size)
    k = 0
    for g, per_cand in zip(groups, shared):
        assert common_prefix_len(g) > 1
        refs = [reference_nlls(model64, s) for s in g]
        for nll, ref in zip(per_cand, refs):
            assert nll.shape == ref.shape == naive[k].shape
            np.testing.assert_allclose(nll, ref, atol=1e-5, rtol=0)
            np.testing.assert_allclose(naive[k], ref, atol=1e-5, rtol=0)
            k += 1
        for rule in ("full", "continuation"):
            np.testing.assert_allclose(rule_scores(g, per_cand, rule), rule_scores(g, refs, rule), atol=1e-5, rtol=0)


def test_edge_shapes_prefix_candidates_single_token_and_common_context(tiny):
    """A candidate that is a strict prefix of another, one-token suffixes, identical candidates, and a prefix
    common to every group (MMLU's hint + demos, computed once for the whole call)."""
    tok, model, model64 = tiny
    ctx = tok("what is the capital of france ? it is about")["input_ids"]
    groups = [
        [ctx + [40, 41], ctx + [40, 41, 42, 43], ctx + [40]],  # prefix-of-each-other candidates
        [ctx + [50], ctx + [51], ctx + [52]],  # one-token suffixes: no suffix model call
        [ctx + [60, 61], ctx + [60, 61]],  # identical candidates: whole prompt is the prefix
        [ctx[:5] + [7, 8, 9], ctx[:5] + [7, 10]],  # a group whose prefix is shorter than the others'
    ]
    calls = [(groups, bs) for bs in (1, 2, 4)] + [([g], 1) for g in groups]  # one group: all prefix is level 0
    for call_groups, bs in calls:
        out = shared_token_nlls(model, call_groups, batch_size=bs)
        for g, per_cand in zip(call_groups, out):
            for s, nll in zip(g, per_cand):
                np.testing.assert_allclose(nll, reference_nlls(model64, s), atol=1e-5, rtol=0)


def test_no_shared_token_falls_back_to_full_prompts(tiny):
    tok, model, model64 = tiny
    groups = [[[5, 6, 7, 8], [9, 6, 7]], [[3, 4, 5], [3, 4, 6, 7]]]  # first group: no BOS, no common token
    out = shared_token_nlls(model, groups, batch_size=2)
    for g, per_cand in zip(groups, out):
        for s, nll in zip(g, per_cand):
            np.testing.assert_allclose(nll, reference_nlls(model64, s), atol=1e-5, rtol=0)


def test_bfloat16_model_scores_in_float32(tiny):
    tok, model, model64 = tiny
    groups = icl_groups(tok, 4, n_tests=2)
    out = shared_token_nlls(copy.deepcopy(model).to(torch.bfloat16), groups, batch_size=2)
    assert out[0][0].dtype == np.float64
    ref = reference_nlls(model64, groups[0][0])
    assert np.abs(out[0][0] - ref).mean() < 0.2  # bf16 weights: close, not equal


def test_rules_follow_their_formulas():
    cands = [[1, 5, 6, 7], [1, 5, 8], [1, 5, 6, 9, 9]]
    nlls = [np.array([1.0, 2.0, 3.0]), np.array([1.0, 4.0]), np.array([1.0, 2.0, 0.5, 0.25])]
    # OpenICL: sum over tokens 1..T-1 / T (T includes BOS)
    assert rule_scores(cands, nlls, "full") == pytest.approx([6 / 4, 5 / 3, 3.75 / 5])
    # continuation: tokens after the common prefix [1, 5] (positions 2..T-1)
    assert rule_scores(cands, nlls, "continuation") == pytest.approx([5.0, 4.0, 2.75])
    # OpenICL pads with EOS and so ignores EOS tokens in both the sum and the count
    assert rule_scores([[1, 5, 2, 7]], [np.array([1.0, 2.0, 3.0])], "full", ignore_id=2) == pytest.approx([4 / 3])
    with pytest.raises(EmotuneError, match="scoring"):
        rule_scores(cands, nlls, "mean")


def test_argmin_ties_go_to_the_first_label():
    assert argmin_first([3.0, 1.0, 1.0, 2.0]) == 1
    assert argmin_first([1.0, 1.0]) == 0


def test_score_groups_shared_and_naive_give_same_predictions(tiny):
    tok, model, _ = tiny
    groups = icl_groups(tok, 6)
    a = score_groups(model, groups, shared_prefix=True, batch_size=2)
    b = score_groups(model, groups, shared_prefix=False, batch_size=4)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5, rtol=0)
    assert a.predictions == b.predictions


def test_a_bos_that_is_eos_is_left_out_like_openicl(tmp_path):
    """OPT prepends `</s>`, its EOS: OpenICL pads with EOS and counts `ids != pad`, so T excludes that BOS."""
    from eval_builders import build_gpt2_tokenizer, build_opt_tokenizer

    from emotune.eval.icl.classification import openicl_ignore_id

    opt = build_opt_tokenizer(tmp_path / "opt")
    ids = opt("the movie was great")["input_ids"]
    assert ids[0] == opt.bos_token_id == opt.eos_token_id == openicl_ignore_id(opt)
    nll = np.arange(1.0, len(ids))  # NLL of tokens 1..T-1
    assert rule_scores([ids], [nll], "full", ignore_id=openicl_ignore_id(opt)) == pytest.approx(
        [nll.sum() / (len(ids) - 1)])
    # MMLU follows OpenCompass, which leaves out the pad token and pads with EOS only where there is none
    from emotune.eval.icl.mmlu import opencompass_ignore_id

    assert opencompass_ignore_id(opt) == opt.pad_token_id != opt.eos_token_id  # OPT's BOS counts there
    gpt2 = build_gpt2_tokenizer(tmp_path / "gpt2")  # BOS == EOS too, but nothing is prepended: T counts all
    assert gpt2.pad_token_id is None and opencompass_ignore_id(gpt2) == gpt2.eos_token_id
    ids = gpt2("the movie was great")["input_ids"]
    nll = np.arange(1.0, len(ids))
    assert rule_scores([ids], [nll], "full", ignore_id=openicl_ignore_id(gpt2)) == pytest.approx([nll.sum() / len(ids)])
