"""The paper's MAUVE protocol (App. A.4 and its scripts), one implementation for the generation tasks
(eval/generation/task.py, real corpora) and the oracle task (eval/oracle_task.py, the demo's language).

    prefixes   a held-out text's first P units: whitespace words of a test row (the paper's Table 4,
               generation tasks) or tokens of the packed held-out stream from a document start (the demo)
    samples    `runs` unbiased ancestral samples of G new tokens per prefix (sampling.sample_runs), under
               an EOS rule: `min_new_tokens` (the paper's call: EOS masked before G, may end at G + 1) or
               `ignore` (exactly G tokens; EOS neither stops nor is masked)
    reference  the held-out continuation of the same prefix (the next m words / the next G tokens)
    MAUVE      of prefix + sample (q) against prefix + reference (p), per run, with mauve-text's defaults;
               reported as mean ± std (ddof 1) over the runs
    ceiling    MAUVE of a second sample of the *reference side* against the references, the score a model
               that is the reference distribution gets at this many prefixes: a second independent draw of
               continuations from the language itself (the oracle task), or, for a corpus with one human
               continuation per prefix, two disjoint random halves of the human texts, one run per halving
               (MAUVE at n/2 against n/2: the spread two human samples of the corpus show)

Summary metrics (the names other tools read): `mauve`, `mauve_std`, `mauve_runs`, `mauve_prefixes`,
`mauve_ceiling`, `mauve_ceiling_std`, and `mauve/run<k>` per run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from emotune.errors import EmotuneError
from emotune.eval.generation.mauve import Featurizer, mauve_from_features


@dataclass(frozen=True)
class Window:
    """One prefix of the packed held-out stream and its reference continuation (token ids)."""

    start: int  # offset in the stream: a document start
    prefix: list[int]  # P tokens
    reference: list[int]  # the next G tokens


def stream_windows(documents: Sequence[Sequence[int]], prefix_tokens: int, new_tokens: int,
                   n: int | None = None) -> list[Window]:
    """Windows of the documents packed end to end (as training packs them): one per document start, whose
    P + G tokens fit in the stream, in stream order, at most `n`. A window may run over a document end: its
    reference then holds the end, the next document's start and its first tokens."""
    if prefix_tokens < 1 or new_tokens < 1:
        raise EmotuneError(f"MAUVE windows: prefix {prefix_tokens} and continuation {new_tokens} must be >= 1 token")
    stream = [int(t) for doc in documents for t in doc]
    out, start = [], 0
    for doc in documents:
        if start + prefix_tokens + new_tokens <= len(stream) and len(doc) > 0:
            mid = start + prefix_tokens
            out.append(Window(start, stream[start:mid], stream[mid : mid + new_tokens]))
            if n is not None and len(out) >= n:
                break
        start += len(doc)
    return out


def run_scores(p_features: np.ndarray, q_runs: Sequence[np.ndarray]) -> list[float]:
    return [mauve_from_features(p_features, q) for q in q_runs]


def spread(scores: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (ddof 1; 0 for one score)."""
    return float(np.mean(scores)), float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0


def split_half_ceiling(human_features: np.ndarray, runs: int, seed: int) -> list[float]:
    """MAUVE of one random half of the human texts against the other, one halving per run."""
    n = len(human_features)
    if n < 4:
        raise EmotuneError(f"MAUVE ceiling: {n} human texts cannot be split into two halves of >= 2")
    scores = []
    for run in range(runs):
        perm = np.random.default_rng([seed, run, 7]).permutation(n)
        half = n // 2
        scores.append(mauve_from_features(human_features[perm[:half]], human_features[perm[half : 2 * half]]))
    return scores


def featurise_runs(featurizer: Featurizer | Callable[[Sequence[str]], np.ndarray],
                   runs: Sequence[Sequence[str]]) -> list[np.ndarray]:
    """Features of every run's texts in one call (batches fill better), split back per run."""
    flat = [t for texts in runs for t in texts]
    feats = featurizer(flat)
    out, start = [], 0
    for texts in runs:
        out.append(feats[start : start + len(texts)])
        start += len(texts)
    return out


def protocol_metrics(p_features: np.ndarray, q_runs: Sequence[np.ndarray], ceiling: Sequence[float]) -> dict[str, float]:
    """The summary metrics of one protocol run (names in the module docstring)."""
    if any(len(q) != len(p_features) for q in q_runs):
        raise EmotuneError("MAUVE: every run needs one sample per prefix "
                           f"({len(p_features)} prefixes, runs of {[len(q) for q in q_runs]})")
    scores = run_scores(p_features, q_runs)
    metrics: dict[str, Any] = {}
    metrics["mauve"], metrics["mauve_std"] = spread(scores)
    metrics["mauve_runs"] = len(scores)
    metrics["mauve_prefixes"] = len(p_features)
    metrics["mauve_ceiling"], metrics["mauve_ceiling_std"] = spread(ceiling)
    for run, score in enumerate(scores):
        metrics[f"mauve/run{run}"] = score
    return metrics


def covering_length(featurizer: Featurizer, texts: Sequence[str], requested: int | str) -> tuple[int, int]:
    """(featuriser max length, texts it cuts). `auto`: the longest text's token count, so nothing is cut
    (the protocol compares whole texts; features then do not depend on the length); a number is used as
    given and the texts longer than it are counted."""
    lengths = featurizer.token_lengths(texts)
    if requested != "auto":
        return int(requested), sum(n > int(requested) for n in lengths)
    limit = featurizer.max_positions()
    if limit is not None and max(lengths) > limit:
        raise EmotuneError(f"MAUVE: a text has {max(lengths)} featuriser tokens, more than the featuriser's "
                           f"{limit} positions; choose a featuriser that covers the whole text")
    return max(lengths), 0
