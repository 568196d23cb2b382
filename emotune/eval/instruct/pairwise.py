"""Pairwise comparison of two outputs lists by a local judge: what `emotune eval --against` and `emotune
judge` run. Writes one JSON result (counts, win rate + interval, lengths, every pair's verdicts)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from emotune.atomic import write_json
from emotune.errors import EmotuneError
from emotune.eval.instruct.judge import judge_format, judge_pairs, response_lengths
from emotune.eval.instruct.outputs import align
from emotune.eval.instruct.stats import summarize


def check_judge(judge: str | None, fmt: str | None) -> None:
    """Before any work: a judge is given, its folder holds a tokenizer and weights, the format is known."""
    from emotune.hub import resolve

    if not judge:
        raise EmotuneError("--against needs a judge: --judge DIR (a local causal LM, e.g. GAIR/autoj-13b or "
                           "WeOpenML/PandaLM-7B-v1) and --judge-format autoj|pandalm|plain")
    judge_format(fmt or "plain")
    resolve(judge, "--judge", need_tokenizer=True, need_weights=True)


def load_judge(judge: str, opts: dict[str, Any]):
    """The judge model and tokenizer: never with the checkpoint's own code (trust_remote_code=False)."""
    from emotune.eval.lm import load_causal_lm

    return load_causal_lm(judge, "--judge", str(opts.get("dtype") or "auto"), opts.get("device"), False)


def result_name(task: str, judge: str, fmt: str, against: str) -> str:
    """`<task>.pairwise-<format>-<hash of judge and opponent>.json`: one file per (task, judge, format, opponent),
    so judging against another opponent into the same folder does not overwrite the first result."""
    digest = hashlib.sha256(json.dumps([str(judge), str(against)]).encode()).hexdigest()[:8]
    return f"{task}.pairwise-{fmt}-{digest}.json"


def compare(a: list[dict], b: list[dict], a_name: str, b_name: str, judge: str, fmt_name: str, opts: dict[str, Any],
            loaded=None) -> dict[str, Any]:
    """Judge A against B on their common instructions (the sets must be equal); A's win / tie / lose."""
    fmt = judge_format(fmt_name)
    pairs = align(a, b, a_name, b_name)
    t0 = time.time()
    model, tokenizer = loaded if loaded is not None else load_judge(judge, opts)
    mode = opts.get("judge_mode") or fmt.default_mode
    beams = opts.get("judge_num_beams") or fmt.num_beams
    penalty = opts.get("judge_repetition_penalty") or fmt.repetition_penalty
    records = judge_pairs(model, tokenizer, pairs, fmt, mode, opts.get("judge_max_new_tokens"),
                          int(opts.get("batch_size") or 4), bool(opts.get("progress")), beams, penalty)
    len_a = response_lengths(tokenizer, [p[0]["output"] for p in pairs])
    len_b = response_lengths(tokenizer, [p[1]["output"] for p in pairs])
    for rec, la, lb in zip(records, len_a, len_b):
        rec["length_a"], rec["length_b"] = la, lb
    seed = int(opts.get("seed") or 0)
    result = summarize([r["outcome"] for r in records], int(opts.get("bootstrap") or 1000), seed)
    result.update({
        "a": {"name": a_name, "generator": pairs[0][0]["generator"], "mean_length": float(np.mean(len_a))},
        "b": {"name": b_name, "generator": pairs[0][1]["generator"], "mean_length": float(np.mean(len_b))},
        "judge": {"model": str(judge), "format": fmt.name, "mode": mode,
                  "max_new_tokens": (opts.get("judge_max_new_tokens") or fmt.max_new_tokens) if mode == "generate"
                  else None, "num_beams": beams if mode == "generate" else None,
                  "repetition_penalty": penalty if mode == "generate" else None,
                  "orders": "both (A first, then B first); a verdict that flips is a tie"},
        "length_unit": "tokens of the judge's tokenizer", "seconds": time.time() - t0, "pairs": records,
    })
    return result


def write_result(path: str | Path, result: dict[str, Any]) -> Path:
    return write_json(path, result)
