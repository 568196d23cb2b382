"""The synthetic language's exact probabilities, checked two independent ways and by sampling."""

import math
from collections import Counter

import numpy as np
import pytest

from emotune.synthetic.language import SyntheticLanguage


@pytest.fixture(scope="module")
def lang():
    return SyntheticLanguage.build(seed=3)


def test_deterministic_for_a_seed(lang):
    again = SyntheticLanguage.build(seed=3)
    assert again.words == lang.words and np.array_equal(again.transition, lang.transition)
    assert SyntheticLanguage.build(seed=4).words != lang.words
    r1, r2 = np.random.default_rng(0), np.random.default_rng(0)
    assert [lang.sample(r1) for _ in range(5)] == [lang.sample(r2) for _ in range(5)]


def test_rows_are_distributions_and_words_unique(lang):
    assert np.allclose(lang.emission.sum(1), 1.0)
    C = len(lang.concept_class)
    for k in range(len(lang.topics)):
        rows = lang.transition[k, list(range(C + 1))]
        used = rows.sum(1) > 0
        assert np.allclose(rows[used].sum(1), 1.0)
    assert len(set(lang.words)) == len(lang.words)
    assert all((lang.emission[:, w] > 0).sum() == 1 for w in range(lang.n_words))  # a word fixes its concept


def test_log_prob_equals_chain_of_next_word_probabilities(lang):
    rng = np.random.default_rng(1)
    for _ in range(20):
        text, _ = lang.sample(rng)
        ids = lang.word_ids(text)
        chain = sum(math.log(lang.next_word_probs(ids[:t])[ids[t]]) for t in range(len(ids)))
        chain += math.log(lang.next_word_probs(ids)[lang.end])
        assert lang.log_prob(text) == pytest.approx(chain, abs=1e-9)
        assert lang.next_word_probs(ids[:3]).sum() == pytest.approx(1.0, abs=1e-12)


def test_sampling_frequencies_match_exact_first_words(lang):
    rng = np.random.default_rng(2)
    n = 4000
    counts = Counter(lang.sample(rng)[0].split()[:2][-1] for _ in range(n))
    exact_first = lang.next_word_probs([])
    # P(second word) = Σ_first P(first) P(second | first)
    second = sum(exact_first[w] * lang.next_word_probs([w]) for w in np.nonzero(exact_first[: lang.n_words])[0])
    for word, c in counts.most_common(5):
        p = second[lang.words.index(word)]
        assert abs(c / n - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-3


def test_unknown_or_impossible_text_has_zero_probability(lang):
    assert lang.log_prob("not a word here") == -math.inf
    assert lang.log_prob("it is about") == -math.inf  # cannot start with the summary


def test_summary_control_and_topic_posterior(lang):
    rng = np.random.default_rng(5)
    text, k = lang.sample(rng, topic=2, summary=True)
    assert text.endswith(f"it is about {lang.topics[2]}") and k == 2
    assert lang.topic_posterior(text)[2] == pytest.approx(1.0)
    plain, _ = lang.sample(rng, summary=False)
    assert "about" not in plain.split()
    # Topics are recoverable from the words: the posterior of long plain texts favours the truth.
    hits = 0
    for _ in range(40):
        t, k = lang.sample(rng, summary=False)
        hits += int(np.argmax(lang.topic_posterior(t)) == k)
    assert hits >= 28


def test_first_sentences_follow_the_language(lang):
    """`sample_sentence` draws a text's first sentence (its own inverse-CDF stream): the first two words'
    frequencies match the exact probabilities, and every sentence ends at its only "."."""
    rng = np.random.default_rng(7)
    n = 4000
    sentences = [lang.sample_sentence(rng) for _ in range(n)]
    assert all(s.split()[-1] == "." and s.split().count(".") == 1 for s, _ in sentences)
    first = Counter(s.split()[0] for s, _ in sentences)
    exact = lang.next_word_probs([])
    for word, c in first.most_common(5):
        p = exact[lang.words.index(word)]
        assert abs(c / n - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-3
    second = Counter(s.split()[1] for s, _ in sentences)
    exact2 = sum(exact[w] * lang.next_word_probs([w]) for w in np.nonzero(exact[: lang.n_words])[0])
    for word, c in second.most_common(5):
        p = exact2[lang.words.index(word)]
        assert abs(c / n - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-3
    # the topic drawn is the text's: its posterior favours it most of the time
    hits = sum(int(np.argmax(lang.topic_posterior(s)) == k) for s, k in sentences[:300])
    assert hits > 0.8 * 300


def test_ambiguous_rows_carry_their_exact_posterior(lang):
    rows = lang.ambiguous_rows(np.random.default_rng(8), 60, max_posterior=0.9)
    assert len(rows) == 60
    for r in rows:
        post = lang.topic_posterior(r["text"])
        assert r["posterior"] == pytest.approx(list(post), abs=1e-15) and post.max() <= 0.9
        assert r["bayes_label"] == int(np.argmax(post)) and r["text"].endswith(" .")
    # genuinely ambiguous: the posterior's own guess is wrong on some rows
    assert 0 < sum(r["bayes_label"] != r["label"] for r in rows) < 60
