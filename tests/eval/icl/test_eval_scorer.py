"""The PPL scorer: shared-prefix and full-prompt NLLs against an independent float64 reference, and the
OpenICL / continuation rules against their formulas."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from eval_builders import TEMPLATES, TEST_TEXTS, TRAIN_TEXTS, build_llama, build_tokenizer  # noqa: F401

from emotune.errors import EmotuneError
from emotune.eval.icl import scorer
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


def family_model(kind: str, vocab: int, **extra):
    """A tiny causal LM of one family (random weights, scaled up so that labels' scores differ clearly)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    sizes = {"gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=512),
             "opt": dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=512, word_embed_proj_dim=32),
             "mistral": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=512, sliding_window=None)}
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512)
    cfg = AutoConfig.for_model(kind, vocab_size=vocab, **{**sizes.get(kind, common), **extra})
    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(4.0)
    return model


@pytest.mark.parametrize("kind", scorer.PACKED_MODEL_TYPES)
def test_packed_label_suffixes_equal_one_row_per_candidate_and_the_reference(tiny, kind, monkeypatch):
    """Every label suffix of a group in one row of that group's cache (a block-diagonal 4D mask, positions of
    each suffix's own prompt) gives each family the NLLs of one row per candidate and of float64 full prompts;
    labels of unequal length, one-token suffixes and a candidate that is a prefix of another included."""
    tok = tiny[0]
    model = family_model(kind, len(tok))
    model64 = copy.deepcopy(model).double()
    ctx = tok("what is the capital of france ? it is about")["input_ids"]
    groups = icl_groups(tok, 6, n_tests=3) + [[ctx + [40, 41], ctx + [40, 41, 42, 43], ctx + [40]],
                                             [ctx + [50], ctx + [51]]]
    assert scorer._packable(model)
    packed = shared_token_nlls(model, groups, batch_size=3)
    monkeypatch.setattr(scorer, "_packable", lambda m: False)
    per_candidate = shared_token_nlls(model, groups, batch_size=3)
    for g, a, b in zip(groups, packed, per_candidate):
        for s, nll_a, nll_b in zip(g, a, b):
            np.testing.assert_allclose(nll_a, nll_b, atol=1e-5, rtol=0)
            np.testing.assert_allclose(nll_a, reference_nlls(model64, s), atol=1e-5, rtol=0)


def test_models_that_cannot_take_the_packed_mask_keep_one_row_per_candidate(tiny):
    vocab = len(tiny[0])
    assert not scorer._packable(family_model("mistral", vocab, sliding_window=16))  # a window the mask would drop
    flash = family_model("llama", vocab)
    flash.config._attn_implementation = "flash_attention_2"
    assert not scorer._packable(flash)
    assert not scorer._packable(family_model("bloom", vocab, n_layer=2, n_head=4))  # ALiBi from the 2D mask
    assert not scorer._packable(object())
