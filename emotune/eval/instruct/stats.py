"""Win / tie / lose counts, the win rate and its bootstrap interval.

Win rate = (wins + ties / 2) / judged pairs, AlpacaEval's convention (a tie is half a win), in percent;
the strict rate (wins only) is reported beside it. With no judged pair the rates are None. The 95% interval is the percentile bootstrap over
instructions: `n_boot` resamples of the per-pair scores (win 1, tie 0.5, lose 0) drawn with
numpy's default_rng(seed), so the same outcomes and seed give the same interval.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

SCORE = {"win": 1.0, "tie": 0.5, "lose": 0.0}


def bootstrap_ci(scores: Sequence[float], n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    x = np.asarray(scores, dtype=np.float64)
    if len(x) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def summarize(outcomes: Sequence[str | None], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Counts, win rates (percent) and the interval of a list of outcomes (None = unparsed)."""
    judged = [o for o in outcomes if o is not None]
    counts = {k: sum(1 for o in judged if o == k) for k in ("win", "tie", "lose")}
    n = len(judged)
    scores = [SCORE[o] for o in judged]
    lo, hi = bootstrap_ci(scores, n_boot, seed) if n else (None, None)
    return {**counts, "unparsed": len(outcomes) - n, "n": n,  # rates None (JSON null) when nothing was judged
            "win_rate": 100.0 * float(np.mean(scores)) if n else None,
            "win_rate_ci": [100.0 * lo, 100.0 * hi] if n else [None, None],
            "strict_win_rate": 100.0 * counts["win"] / n if n else None,
            "ties": "half a win", "bootstrap": {"resamples": n_boot, "seed": seed, "level": 0.95}}


def table(result: dict[str, Any]) -> str:
    """The win / tie / lose table `emotune eval --against` prints."""
    a, b = result["a"], result["b"]
    head = f"{'A':<28} {'B':<28} {'judge':<26} {'win':>5} {'tie':>5} {'lose':>5} {'unparsed':>8}  " \
           f"{'win rate (95% CI)':<22} {'len A':>6} {'len B':>6}"
    lo, hi = result["win_rate_ci"]
    rate = f"{result['win_rate']:5.1f} [{lo:5.1f}, {hi:5.1f}]" if result["n"] else "-"
    judge = f"{_short(result['judge']['model'], 17)} ({result['judge']['format']})"
    row = (f"{_short(a['name']):<28} {_short(b['name']):<28} {judge:<26} "
           f"{result['win']:>5} {result['tie']:>5} {result['lose']:>5} {result['unparsed']:>8}  "
           f"{rate:<22} {a['mean_length']:>6.1f} {b['mean_length']:>6.1f}")
    return head + "\n" + "-" * len(head) + "\n" + row


def _short(text: str, width: int = 28) -> str:
    """A name that fits its column: a path by its last two components (`emo/checkpoint-20`), cut from the left."""
    parts = Path(text).parts
    if len(parts) > 2 and ("/" in text or "\\" in text):
        text = "/".join(parts[-2:])
    return text if len(text) <= width else "…" + text[-(width - 1):]
