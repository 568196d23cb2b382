"""ROUGE-1/2/L F-measure of samples against human text (the `rouge-score` package, as HF `evaluate`'s
`rouge` metric uses it: default tokenizer, no stemming). `evaluate` reports the bootstrap median of
the mean; we report the plain mean over pairs, which is what that median estimates, without randomness.
"""

from __future__ import annotations

from typing import Sequence

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge(predictions: Sequence[str], references: Sequence[str], types: Sequence[str] = ROUGE_TYPES,
          use_stemmer: bool = False) -> dict[str, float]:
    """Mean F-measure of each ROUGE type over (prediction, reference) pairs."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        return {t: float("nan") for t in types}
    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=use_stemmer)
    totals = dict.fromkeys(types, 0.0)
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)  # (target, prediction)
        for t in types:
            totals[t] += scores[t].fmeasure
    return {t: totals[t] / len(predictions) for t in types}
