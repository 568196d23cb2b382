"""PPL_test, PPL_oracle and forward / reverse CE against float64 computations on small vocabularies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from generation_builders import (
    SPORTS,
    build_llama,
    sentences,
)

from emotune.errors import EmotuneError
from emotune.eval.generation.lm_metrics import ModelScorer, forward_reverse_ce, perplexity, ppl_oracle, ppl_test, token_nlls

V = 24


class BigramOracle:
    """A synthetic oracle with exact probabilities: p(x_t | x_<t) = table[x_{t-1}] (float64)."""

    tokenizer = None

    def __init__(self, vocab: int, seed: int, zeros: bool = False):
        rng = np.random.default_rng(seed)
        table = rng.dirichlet(np.full(vocab, 0.5), size=vocab)
        if zeros:  # some exactly impossible tokens
            table[:, -3:] = 0.0
            table /= table.sum(1, keepdims=True)
        self.table = table

    def next_token_logprobs(self, input_ids, attention_mask):
        with np.errstate(divide="ignore"):
            return torch.from_numpy(np.log(self.table[input_ids.numpy()]))


def _seqs(n=7, seed=0, vocab=V, zeros=False):
    rng = np.random.default_rng(seed)
    hi = vocab - 3 if zeros else vocab
    return [list(rng.integers(0, hi, size=int(rng.integers(2, 12)))) for _ in range(n)]


def _logp64(scorer, seq):
    """float64 log-distributions at every position of one unpadded sequence."""
    if isinstance(scorer, BigramOracle):
        with np.errstate(divide="ignore"):
            return np.log(scorer.table[np.array(seq)])
    with torch.no_grad():
        logits = scorer(input_ids=torch.tensor([seq])).logits[0].double().numpy()
    top = logits.max(1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(1, keepdims=True))


def _ce64(a, b, seqs):
    """Reference: per text mean over positions 0..T-2 of -sum p_b log p_a, then mean over texts (loops)."""
    vals = []
    for s in seqs:
        la, lb = _logp64(a, s), _logp64(b, s)
        per = []
        for t in range(len(s) - 1):
            tot = 0.0
            for v in range(la.shape[1]):
                pb = math.exp(lb[t, v])
                if pb > 0:
                    tot -= pb * la[t, v]
            per.append(tot)
        vals.append(sum(per) / len(per))
    return sum(vals) / len(vals)


@pytest.fixture(scope="module")
def models():
    return build_llama(None, V, seed=1, hidden=32, scale=3.0), build_llama(None, V, seed=2, hidden=32, scale=3.0)


def test_forward_reverse_ce_equal_float64(models):
    m, r = models
    seqs = _seqs()
    out = forward_reverse_ce(m, r, seqs, batch_size=3)
    assert out["forward_ce"] == pytest.approx(_ce64(m, r, seqs), rel=1e-5)
    assert out["reverse_ce"] == pytest.approx(_ce64(r, m, seqs), rel=1e-5)
    assert out["ce_texts"] == len(seqs)
    same = forward_reverse_ce(m, m, seqs)  # CE of a model with itself = its entropy: forward == reverse
    assert same["forward_ce"] == pytest.approx(same["reverse_ce"], rel=1e-6)
    assert out["forward_ce"] > same["forward_ce"] * 0.5


def test_ce_with_an_exact_oracle_reference_including_zero_probabilities(models):
    m, _ = models
    oracle = BigramOracle(V, 4, zeros=True)
    seqs = _seqs(seed=3, zeros=True)
    out = forward_reverse_ce(m, oracle, seqs, batch_size=4)
    assert out["forward_ce"] == pytest.approx(_ce64(m, oracle, seqs), rel=1e-5)
    assert math.isinf(out["reverse_ce"])  # the model puts mass where the oracle has none
    both = forward_reverse_ce(oracle, BigramOracle(V, 5, zeros=True), seqs)
    assert np.isfinite(both["forward_ce"]) and np.isfinite(both["reverse_ce"])  # 0 log 0 = 0


def test_ce_vocabulary_mismatch_is_an_error_or_sliced(models):
    m, _ = models
    bigger = build_llama(None, V + 8, seed=5)
    with pytest.raises(EmotuneError, match="vocabulary"):
        forward_reverse_ce(m, bigger, _seqs(3))
    out = forward_reverse_ce(m, bigger, _seqs(3), vocab_size=V)
    assert np.isfinite(out["forward_ce"])


def test_token_nlls_and_perplexity_match_float64(models):
    m, _ = models
    seqs = _seqs(seed=5)
    nlls = token_nlls(ModelScorer(m), seqs, batch_size=2)
    for s, n in zip(seqs, nlls):
        lp = _logp64(m, s)
        ref = [-lp[t, s[t + 1]] for t in range(len(s) - 1)]
        np.testing.assert_allclose(n, ref, rtol=1e-5)
    tot = sum(float(n.sum()) for n in nlls)
    cnt = sum(len(n) for n in nlls)
    assert perplexity(nlls, "token") == pytest.approx(math.exp(tot / cnt), rel=1e-12)
    assert perplexity(nlls, "text") == pytest.approx(math.exp(np.mean([n.mean() for n in nlls])), rel=1e-12)
    # by hand: NLLs [1, 1, 1] and [4]: token mean 7 / 4 = 1.75, mean of text means (1 + 4) / 2 = 2.5
    assert perplexity([np.array([1.0, 1.0, 1.0]), np.array([4.0])], "token") == pytest.approx(math.exp(1.75))
    assert perplexity([np.array([1.0, 1.0, 1.0]), np.array([4.0])], "text") == pytest.approx(math.exp(2.5))


def test_ppl_oracle_with_exact_probabilities():
    oracle = BigramOracle(V, 7)
    seqs = _seqs(seed=8)
    nll = [-math.log(oracle.table[s[t - 1], s[t]]) for s in seqs for t in range(1, len(s))]
    assert ppl_oracle(oracle, token_ids=seqs) == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-6)
    with pytest.raises(EmotuneError, match="token ids"):
        ppl_oracle(oracle, texts=["a b"])


def test_ppl_test_and_ppl_oracle_of_a_model_with_its_tokenizer(tiny_cache):
    tok = tiny_cache.load_tokenizer("generation")
    model = build_llama(None, len(tok), seed=1)
    texts = sentences(SPORTS, 4, 25, 1) + ["too short to count"]
    out = ppl_test(model, tok, texts, batch_size=2)
    assert out["ppl_test_texts"] == 4  # the short text is dropped (< 20 words)
    seqs = [tok(t)["input_ids"] for t in texts[:4]]
    nlls = token_nlls(ModelScorer(model), seqs)
    assert out["ppl_test"] == pytest.approx(math.exp(np.mean([n.mean() for n in nlls])), rel=1e-6)
    assert out["ppl_test_token"] == pytest.approx(perplexity(nlls, "token"), rel=1e-6)
    # a model as oracle, through its tokenizer: same as scoring its token ids
    assert ppl_oracle(model, texts[:4], tokenizer=tok) == pytest.approx(perplexity(nlls, "token"), rel=1e-6)


def test_ppl_test_with_every_text_filtered_out_names_the_filter(tiny_cache):
    """Not a silent ppl_test=nan with ppl_test_texts=0: one line naming the filter (exit 2 from the CLI)."""
    tok = tiny_cache.load_tokenizer("generation")
    model = build_llama(None, len(tok), seed=1)
    with pytest.raises(EmotuneError, match=r"none of the 2 test texts .* lm_min_words=20 \(words, 2 have fewer\)"):
        ppl_test(model, tok, ["too short", "also too short to count"])
    long = sentences(SPORTS, 2, 25, 1)
    with pytest.raises(EmotuneError, match=r"lm_max_tokens=5 \(2 have more tokens\)") as err:
        ppl_test(model, tok, long, max_tokens=5)
    assert "\n" not in str(err.value)
