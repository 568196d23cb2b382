"""Paired, interleaved timing: the one way every benchmark here turns times into ratios.

A ratio taken from two arms measured at different moments moves with whatever else the machine does
(a neighbour's job, page-cache pressure, frequency changes). So the arms run in rounds, each round
calling every arm once on the same inputs, in an order that is reversed every other round (ABC, CBA, ...)
so that neither arm always runs first; a ratio is formed per round, from times taken seconds apart; and
what is reported is the median of the per-round ratios with its interquartile range and the number of
rounds. Slow drift cancels inside a round; a disturbed round moves one sample, not the median.

Memory is not measured here: peak RSS is deterministic and is measured separately, one process per arm.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Iterable


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    """(q1, median, q3) with linear interpolation (numpy's default), for any number of samples >= 1."""
    s = sorted(xs)
    if not s:
        raise ValueError("no samples")

    def q(p: float) -> float:
        pos = p * (len(s) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)

    return q(0.25), q(0.5), q(0.75)


def summarize(ratios: list[float]) -> dict:
    """Median and IQR of per-round ratios, as every benchmark reports them."""
    q1, med, q3 = quartiles(ratios)
    return {"median": round(med, 4), "q1": round(q1, 4), "q3": round(q3, 4), "iqr": round(q3 - q1, 4),
            "rounds": len(ratios)}


def run_rounds(arms: dict[str, Callable[[], object]], rounds: int, warmup: int = 1,
               clock: Callable[[], float] = time.perf_counter, log: Callable[[str], None] | None = None
               ) -> dict[str, list[float]]:
    """Time every arm once per round, the order reversed every other round; returns arm -> [seconds per round].

    `warmup` untimed rounds first (allocator, BLAS, caches). `clock`: time.process_time with one thread
    (the process's own CPU time), time.perf_counter otherwise."""
    names = list(arms)
    for _ in range(warmup):
        for name in names:
            arms[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            t0 = clock()
            arms[name]()
            times[name].append(clock() - t0)
        if log:
            log(f"  round {r}: " + ", ".join(f"{n} {times[n][-1]:.3f}s" for n in names))
    return times


def round_ratios(times: dict[str, list[float]], a: str | Iterable[str], b: str | Iterable[str]) -> list[float]:
    """Per-round ratio of arm(s) `a` over arm(s) `b` (several arms: their summed time in that round)."""
    a = [a] if isinstance(a, str) else list(a)
    b = [b] if isinstance(b, str) else list(b)
    n = len(times[a[0]])
    out = []
    for r in range(n):
        den = sum(times[k][r] for k in b)
        out.append(sum(times[k][r] for k in a) / den if den > 0 else float("inf"))
    return out


def check(name: str, stats: dict, floor: float | None = None, target: str | None = None) -> str:
    """One line for a ratio: its median [IQR] over rounds, the floor / target it is held against, and a flag.

    A median below a physical floor (e.g. fused EMO / fused MLE >= 1 + t(EMO's extra N x V x d product) / t(MLE),
    timed in the same rounds) cannot be a property of the code: it says the measurement was disturbed, so it is
    flagged as an error."""
    line = f"{name}: median {stats['median']:.3f} [IQR {stats['q1']:.3f}-{stats['q3']:.3f}] over {stats['rounds']} rounds"
    if floor is not None:
        line += f"; floor {floor:.3f}"
        if stats["median"] < floor:
            line += "  << MEASUREMENT ERROR: below its floor, the machine was disturbed; rerun on a quiet machine"
    if target:
        op, value = target.split()
        ok = stats["median"] <= float(value) if op == "<=" else stats["median"] >= float(value)
        line += f"; target {op} {value} {'met' if ok else 'NOT MET'}"
    return line


def median(xs: list[float]) -> float:
    return statistics.median(xs)
