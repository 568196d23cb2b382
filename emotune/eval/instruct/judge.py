"""A local pairwise judge: any Hugging Face causal LM compares two sides' responses, in both orders.

Every pair is judged twice, side A first and side B first, so that a judge's position bias cancels: the
outcome for A is the two orders' common outcome, and a tie when they disagree (a verdict that flips with
the order says nothing about the responses). A pair whose verdict could not be parsed in either order is
*unparsed*: counted and reported, left out of win / tie / lose, never guessed.

Verdicts come from the format (emotune.eval.instruct.formats) by
  generate    greedy decoding of the judge's answer (at most judge_max_new_tokens), parsed; or
  likelihood  the judge's log-probability of each verdict string after the prompt (summed over its
              tokens, float32 log-softmax), the most likely one wins: never unparsed.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from emotune.errors import EmotuneError
from emotune.eval.generation.sampling import _eos_ids, sample_batch
from emotune.eval.instruct.formats import FIRST, FORMATS, SECOND, TIE, VERDICTS, JudgeFormat
from emotune.eval.lm import token_nlls

WIN, LOSE = "win", "lose"


def judge_format(name: str) -> JudgeFormat:
    if name not in FORMATS:
        raise EmotuneError(f"--judge-format {name!r}: unknown (known: {', '.join(FORMATS)})")
    return FORMATS[name]


def _prompt_ids(tokenizer, text: str) -> list[int]:
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if not ids:
        raise EmotuneError("judge: the tokenizer produced no tokens for a judge prompt")
    return ids


def verdicts_by_likelihood(model, tokenizer, prompts: Sequence[str], fmt: JudgeFormat,
                           batch_size: int = 4) -> list[str]:
    """The most likely verdict string after each prompt (ties between candidates: the earlier of first,
    second, tie)."""
    conts = {v: list(tokenizer(fmt.continuations[v], add_special_tokens=False)["input_ids"]) for v in VERDICTS}
    if any(not c for c in conts.values()):
        raise EmotuneError(f"judge format {fmt.name}: a verdict string tokenises to nothing")
    seqs, spans = [], []
    for p in prompts:
        ids = _prompt_ids(tokenizer, p)
        for v in VERDICTS:
            seqs.append(ids + conts[v])
            spans.append(len(conts[v]))
    nlls = token_nlls(model, seqs, batch_size=batch_size, longest_first=True)
    out = []
    for i in range(len(prompts)):
        scores = [-float(nlls[3 * i + k][-spans[3 * i + k]:].sum()) for k in range(3)]
        out.append(VERDICTS[int(np.argmax(scores))])
    return out


def verdicts_by_generation(model, tokenizer, prompts: Sequence[str], fmt: JudgeFormat, max_new_tokens: int,
                           batch_size: int = 4) -> tuple[list[str | None], list[str]]:
    """Greedy answers (stopping at EOS), parsed; (verdicts with None for unparsed, the raw texts)."""
    eos = _eos_ids(tokenizer, model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    ids = [_prompt_ids(tokenizer, p) for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    texts = [""] * len(ids)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        news = sample_batch(model, [ids[i] for i in chunk], [0] * len(chunk), 0, max_new_tokens, eos, pad,
                            temperature=0.0)
        for i, toks in zip(chunk, news):
            texts[i] = tokenizer.decode(toks, skip_special_tokens=True)
    return [fmt.parse(t) for t in texts], texts


def combine(ab: str | None, ba: str | None) -> str | None:
    """A's outcome from the verdict with A first (`ab`) and with B first (`ba`); None if either is unparsed."""
    if ab is None or ba is None:
        return None
    first = {FIRST: WIN, SECOND: LOSE, TIE: TIE}[ab]
    second = {FIRST: LOSE, SECOND: WIN, TIE: TIE}[ba]
    return first if first == second else TIE


def judge_pairs(model, tokenizer, pairs: Sequence[tuple[dict, dict]], fmt: JudgeFormat, mode: str | None = None,
                max_new_tokens: int | None = None, batch_size: int = 4, progress: bool = False) -> list[dict[str, Any]]:
    """One record per pair: both orders' verdicts (and raw answers in generate mode) and A's outcome."""
    mode = mode or fmt.default_mode
    t0 = time.time()
    prompts = []
    for a, b in pairs:
        prompts.append(fmt.prompt(a["instruction"], a["output"], b["output"]))
        prompts.append(fmt.prompt(a["instruction"], b["output"], a["output"]))
    if mode == "likelihood":
        verdicts: list[str | None] = list(verdicts_by_likelihood(model, tokenizer, prompts, fmt, batch_size))
        raw: list[str] | None = None
    elif mode == "generate":
        verdicts, raw = verdicts_by_generation(model, tokenizer, prompts, fmt,
                                               max_new_tokens or fmt.max_new_tokens, batch_size)
    else:
        raise EmotuneError(f"judge_mode={mode!r}: use generate or likelihood")
    if progress:
        print(f"[judge] {len(prompts)} verdicts ({time.time() - t0:.0f}s)", flush=True)
    records = []
    for i, (a, _b) in enumerate(pairs):
        rec = {"instruction": a["instruction"], "verdict_ab": verdicts[2 * i], "verdict_ba": verdicts[2 * i + 1],
               "outcome": combine(verdicts[2 * i], verdicts[2 * i + 1])}
        if raw is not None:
            rec["raw_ab"], rec["raw_ba"] = raw[2 * i], raw[2 * i + 1]
        records.append(rec)
    return records


def response_lengths(tokenizer, texts: Sequence[str]) -> list[int]:
    """Tokens of each response under one tokenizer (the judge's, the same for both sides), no special tokens."""
    return [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
