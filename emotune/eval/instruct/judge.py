"""A local pairwise judge: any Hugging Face causal LM compares two sides' responses, in both orders.

Every pair is judged twice, side A first and side B first, so that a judge's position bias cancels: the
outcome for A is the two orders' common outcome, and a tie when they disagree (a verdict that flips with
the order says nothing about the responses). A pair whose verdict could not be parsed in either order is
*unparsed*: counted and reported, left out of win / tie / lose, never guessed.

Verdicts come from the format (emotune.eval.instruct.formats) by
  generate    decoding the judge's answer (at most judge_max_new_tokens) as the judge's own inference does
              (greedy for Auto-J and plain; PandaLM: beam search, 4 beams, repetition penalty 1.2), parsed; or
  likelihood  the judge's log-probability of each verdict string as the continuation of the prompt (prompt +
              verdict tokenised whole, the verdict's tokens summed, float32 log-softmax), the most likely one
              wins: never unparsed.
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


def verdict_sequences(tokenizer, prompt: str, fmt: JudgeFormat) -> tuple[list[list[int]], int]:
    """The token ids of prompt + each verdict string (first, second, tie), tokenised whole as the judge reads
    them, and where the verdicts start: the longest common token prefix of the prompt alone and the three
    (as the ICL scorer's continuation rule). A verdict string tokenised on its own would not do: a
    sentencepiece tokenizer turns PandaLM's "1" into "▁1", which is not what the judge writes after
    "### Evaluation:\n"; and a BPE merge across the boundary moves the prompt's last token into the verdicts."""
    from emotune.eval.icl.scorer import common_prefix_len

    ids = _prompt_ids(tokenizer, prompt)
    seqs = [list(tokenizer(prompt + fmt.continuations[v], add_special_tokens=True)["input_ids"]) for v in VERDICTS]
    start = common_prefix_len([ids, *seqs])
    if start == 0:
        raise EmotuneError(f"judge format {fmt.name}: the prompt and its verdicts share no first token (a "
                           "tokenizer that adds no BOS and changes the prompt's first token?)")
    if any(len(s) <= start for s in seqs) or len({tuple(s[start:]) for s in seqs}) < 3:
        raise EmotuneError(f"judge format {fmt.name}: the judge's tokenizer gives two verdicts the same tokens "
                           "after the prompt (or none), so their likelihoods cannot tell them apart")
    return seqs, start


def verdicts_by_likelihood(model, tokenizer, prompts: Sequence[str], fmt: JudgeFormat,
                           batch_size: int = 4) -> list[str]:
    """The most likely verdict after each prompt: the summed log-probability of each verdict's tokens as the
    continuation of the prompt (verdict_sequences); ties between candidates: the earlier of first, second, tie."""
    seqs, starts = [], []
    for p in prompts:
        three, start = verdict_sequences(tokenizer, p, fmt)
        seqs += three
        starts.append(start)
    nlls = token_nlls(model, seqs, batch_size=batch_size, longest_first=True)
    out = []
    for i, start in enumerate(starts):  # NLL index t-1 predicts token t: the verdict's tokens start..T-1
        scores = [-float(nlls[3 * i + k][start - 1:].sum()) for k in range(3)]
        out.append(VERDICTS[int(np.argmax(scores))])
    return out


def _pad_id(tokenizer, eos: list[int]) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)


def _beam_search(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, num_beams: int,
                 repetition_penalty: float, eos: list[int]) -> list[list[int]]:
    """Hugging Face generate with the judge's own decoding (PandaLM: 4 beams, early stopping, repetition
    penalty 1.2, no sampling) on left-padded prompts; the new tokens of each, up to and with the first EOS."""
    import torch
    from transformers import GenerationConfig

    from emotune.eval.lm import model_device, pad_left

    pad = _pad_id(tokenizer, eos)
    ids, mask = pad_left(prompts, pad)
    dev = model_device(model)
    config = GenerationConfig(do_sample=False, num_beams=num_beams, early_stopping=True,
                              repetition_penalty=repetition_penalty, max_new_tokens=max_new_tokens,
                              eos_token_id=eos or None, pad_token_id=pad)
    with torch.no_grad():
        out = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), generation_config=config)
    news = []
    for row in out[:, ids.shape[1]:].tolist():
        cut = next((k + 1 for k, t in enumerate(row) if t in eos), len(row))
        news.append(row[:cut])
    return news


def verdicts_by_generation(model, tokenizer, prompts: Sequence[str], fmt: JudgeFormat, max_new_tokens: int,
                           batch_size: int = 4, num_beams: int | None = None,
                           repetition_penalty: float | None = None) -> tuple[list[str | None], list[str]]:
    """The judge's answers (stopping at EOS), parsed; (verdicts with None for unparsed, the raw texts).
    Decoding is the format's (its judge's own inference settings) unless num_beams / repetition_penalty are
    given: greedy with the batch-invariant sampler where both are 1, else Hugging Face beam search."""
    num_beams = num_beams or fmt.num_beams
    penalty = fmt.repetition_penalty if repetition_penalty is None else repetition_penalty
    eos = _eos_ids(tokenizer, model)
    ids = [_prompt_ids(tokenizer, p) for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    texts = [""] * len(ids)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        if num_beams == 1 and penalty == 1.0:
            news = sample_batch(model, [ids[i] for i in chunk], [0] * len(chunk), 0, max_new_tokens, eos,
                                _pad_id(tokenizer, eos), temperature=0.0)
        else:
            news = _beam_search(model, tokenizer, [ids[i] for i in chunk], max_new_tokens, num_beams, penalty, eos)
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
                max_new_tokens: int | None = None, batch_size: int = 4, progress: bool = False,
                num_beams: int | None = None, repetition_penalty: float | None = None) -> list[dict[str, Any]]:
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
        verdicts, raw = verdicts_by_generation(model, tokenizer, prompts, fmt, max_new_tokens or fmt.max_new_tokens,
                                               batch_size, num_beams, repetition_penalty)
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
