"""Oracle metrics against a brute-force float64 computation on a tiny model and the synthetic language."""

import math

import numpy as np
import pytest
import torch
from tiny_models import tiny_llama

from emotune.errors import EmotuneError
from emotune.eval.oracle_task import oracle_cross_entropies, oracle_perplexity_of_samples
from emotune.eval.oracle_task import test_perplexity as perplexity
from emotune.synthetic.language import SyntheticLanguage, train_sentencepiece_tokenizer
from emotune.synthetic.oracle import TokenOracle, smoothed_oracle_log_prob


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    lang = SyntheticLanguage.build(seed=1)
    rng = np.random.default_rng(0)
    texts = [lang.sample(rng)[0] for _ in range(1500)]
    tok = train_sentencepiece_tokenizer(texts, tmp_path_factory.mktemp("tok"), vocab_size=768)
    model = tiny_llama(len(tok), seed=0, layers=1, heads=2, max_positions=256, bos=tok.bos_token_id, eos=tok.eos_token_id)
    return lang, tok, model, [lang.sample(rng)[0] for _ in range(3)]


def test_tokenizer_is_llama_style_and_word_aligned(setup):
    lang, tok, _, texts = setup
    ids = tok(texts[0])["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == len(texts[0].split()) + 1
    assert tok.decode(ids, skip_special_tokens=True) == texts[0]
    TokenOracle(lang, tok)  # every word is one token


def test_cross_entropies_match_brute_force(setup):
    lang, tok, model, texts = setup
    oracle = TokenOracle(lang, tok)
    got = oracle_cross_entropies(model, oracle, texts)
    V = len(tok)
    fwd, rev, n = 0.0, 0.0, 0
    for text in texts:
        words = text.split()
        ids = [tok.bos_token_id] + [tok.convert_tokens_to_ids("▁" + w) for w in words]
        for t in range(len(words) + 1):
            with torch.no_grad():  # each prefix on its own: a separate path from the batched pass
                q = torch.softmax(model(torch.tensor([ids[: t + 1]])).logits[0, -1].double(), -1).numpy()
            p = np.zeros(V)
            exact = lang.next_word_probs(lang.word_ids(" ".join(words[:t])))
            for w, pw in enumerate(exact[:-1]):
                p[tok.convert_tokens_to_ids("▁" + lang.words[w])] += pw
            p[tok.eos_token_id] += exact[-1]
            fwd += -float(np.sum(p[p > 0] * np.log(q[p > 0])))
            rev += -float(np.sum(q * np.log((1 - 1e-6) * p + 1e-6 / V)))
            n += 1
    assert got["positions"] == n
    assert got["forward_ce"] == pytest.approx(fwd / n, rel=1e-5)
    assert got["reverse_ce"] == pytest.approx(rev / n, rel=1e-5)


def test_a_perfect_model_reaches_the_oracle_entropy(setup):
    """The oracle itself as the model: forward CE = entropy, PPL_test = oracle perplexity."""
    lang, tok, _, texts = setup
    oracle = TokenOracle(lang, tok)

    class OracleModel(torch.nn.Module):
        device = torch.device("cpu")

        def forward(self, input_ids, attention_mask):
            logits = torch.zeros(*input_ids.shape, len(tok), dtype=torch.float64)
            for b, (row, mask) in enumerate(zip(input_ids.tolist(), attention_mask.tolist())):
                words = [oracle.token_word[i] for i in row[1 : sum(mask)]]
                for t in range(sum(mask)):
                    logits[b, t] = torch.tensor(np.log(np.maximum(oracle.next_token_probs(words[:t]), 1e-300)))
            return type("Out", (), {"logits": logits})

    m = OracleModel()
    ce = oracle_cross_entropies(m, oracle, texts)
    entropy = ce["forward_ce"]
    assert ce["reverse_ce"] == pytest.approx(entropy, rel=1e-4)
    words = sum(len(t.split()) + 1 for t in texts)
    exact_ppl = math.exp(-sum(lang.log_prob(t) for t in texts) / words)
    assert perplexity(m, oracle, texts) == pytest.approx(exact_ppl, rel=1e-9)


def test_smoothed_oracle_log_prob(setup):
    lang = setup[0]
    text = setup[3][0]
    lp, n = smoothed_oracle_log_prob(lang, text.split(), ended=True, eps=1e-6)
    assert n == len(text.split()) + 1
    assert lp == pytest.approx(lang.log_prob(text), abs=1e-4)  # ε barely moves a possible text
    bad, _ = smoothed_oracle_log_prob(lang, ["zzz"] + text.split(), ended=True)
    assert bad < lp + math.log(1e-6 / (lang.n_words + 1)) + 1  # the unknown word pays the floor


def test_oracle_ppl_of_samples_is_reproducible_and_finite(setup):
    lang, tok, model, _ = setup
    a = oracle_perplexity_of_samples(model, tok, lang, n_samples=8, max_new_tokens=12, seed=3)
    b = oracle_perplexity_of_samples(model, tok, lang, n_samples=8, max_new_tokens=12, seed=3)
    assert a == b and math.isfinite(a["ppl_oracle"]) and a["ppl_oracle"] > 1


def test_unaligned_tokenizer_is_refused(setup, tmp_path):
    lang = setup[0]
    rng = np.random.default_rng(1)
    small = train_sentencepiece_tokenizer([lang.sample(rng)[0] for _ in range(200)], tmp_path, vocab_size=300)
    with pytest.raises(EmotuneError, match="one token per word"):
        TokenOracle(lang, small)
