"""ROUGE-1/2/L against hand-checked pairs."""

from __future__ import annotations

import pytest

from emotune.eval.generation.rouge import rouge

# (prediction, reference, rouge1 F, rouge2 F, rougeL F), worked out by hand:
PAIRS = [
    ("the cat sat on the mat", "the cat sat on the mat", 1.0, 1.0, 1.0),
    # P1 = 2/2, R1 = 2/6 -> F = 0.5; bigrams: 1 of 1 vs 1 of 5 -> 1/3; LCS 2 -> 0.5
    ("the cat", "the cat sat on the mat", 0.5, 1 / 3, 0.5),
    # unigrams 2 of 3 vs 2 of 2 -> 0.8; no common bigram; LCS 1: P 1/3, R 1/2 -> 0.4
    ("mat the on", "the mat", 0.8, 0.0, 0.4),
    # the default tokenizer lowercases and drops punctuation
    ("The Cat!", "the cat", 1.0, 1.0, 1.0),
    ("dogs bark", "the cat", 0.0, 0.0, 0.0),
]


@pytest.mark.parametrize("pred,ref,r1,r2,rl", PAIRS)
def test_rouge_hand_checked_pairs(pred, ref, r1, r2, rl):
    out = rouge([pred], [ref])
    assert out["rouge1"] == pytest.approx(r1)
    assert out["rouge2"] == pytest.approx(r2)
    assert out["rougeL"] == pytest.approx(rl)


def test_rouge_is_the_mean_over_pairs():
    out = rouge([p[0] for p in PAIRS], [p[1] for p in PAIRS])
    for i, key in enumerate(("rouge1", "rouge2", "rougeL")):
        assert out[key] == pytest.approx(sum(p[2 + i] for p in PAIRS) / len(PAIRS))
    with pytest.raises(ValueError):
        rouge(["a"], [])
