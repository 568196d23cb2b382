"""Language-model metrics of the paper's Table 2 and Fig. 2: PPL_test, PPL_oracle and token-level
forward / reverse cross-entropy between a model and a reference model.

Everything is computed from one primitive, the next-token log-distribution at every position of a
batch of right-padded token sequences: `scorer.next_token_logprobs(input_ids, attention_mask) ->
[B, T, V]` where row t is log p(. | x_0..x_t). A Hugging Face causal LM becomes such a scorer through
`ModelScorer` (log-softmax of its logits in float32 whatever the model dtype); a synthetic oracle that
knows its exact probabilities implements the same method directly (see `Oracle`). Sums over tokens
and texts are accumulated in float64.

    token NLLs      -log p(x_t | x_<t) for t = 1..T-1 (the first token, usually BOS, is not scored)
    PPL_test        the model on test texts. `ppl_test` follows the paper's script (DRSY/EMO
                    language_modeling/test_utils.py): exp(mean over texts of the text's mean token NLL);
                    `ppl_test_token` is the token-weighted exp(sum NLL / #tokens).
    PPL_oracle      the oracle on the samples (prefix + sample text), token-weighted.
    forward CE      mean over positions of  sum_v -p_ref(v) log p_model(v)  (a recall-like measure)
    reverse CE      mean over positions of  sum_v -p_model(v) log p_ref(v)  (a precision-like measure)
                    both per text, then averaged over texts, as the paper's script does. Positions are
                    the T-1 distributions that predict tokens 1..T-1 of the text (the paper's script
                    used logits[:, 1:], i.e. shifted by one and including the one past the last token;
                    we score the distributions the text actually conditions on).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from emotune.errors import EmotuneError
from emotune.eval import lm


@runtime_checkable
class Oracle(Protocol):
    """Anything that returns exact next-token log-probabilities for token sequences.

    `input_ids` [B, T] is right-padded (padding where `attention_mask` is 0; its value is arbitrary);
    the result [B, T, V] holds log p(. | x_0..x_t) at row t. Rows at padding are ignored.
    An oracle may carry a `tokenizer` attribute: texts are then tokenised with it. Without one
    (None or absent) it receives the evaluated model's own token ids, so it must share that vocabulary.
    """

    def next_token_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...


@dataclass
class ModelScorer:
    """A Hugging Face causal LM as an `Oracle`: log-softmax of its logits, in float32."""

    model: Any
    tokenizer: Any = None
    vocab_size: int | None = None  # keep only the first V logits (padded embedding matrices), renormalised

    @torch.no_grad()
    def next_token_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return lm.next_token_logprobs(self.model, input_ids, attention_mask, self.vocab_size)


def as_scorer(obj: Any, tokenizer: Any = None, vocab_size: int | None = None) -> Oracle:
    """An `Oracle` from a model (wrapped in ModelScorer) or from an object that already is one."""
    if hasattr(obj, "next_token_logprobs"):
        return obj
    if isinstance(obj, torch.nn.Module):
        return ModelScorer(obj, tokenizer, vocab_size)
    raise EmotuneError(f"cannot score with a {type(obj).__name__}: give a causal LM or an object with "
                       "next_token_logprobs(input_ids, attention_mask)")


def tokenize_texts(tokenizer, texts: Sequence[str], max_tokens: int | None = None) -> list[list[int]]:
    """Token ids of each text with the tokenizer's special tokens (BOS for LLaMA, none for GPT-2)."""
    out = []
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        out.append(list(ids[:max_tokens] if max_tokens else ids))
    return out


def token_nlls(scorer: Oracle, seqs: Sequence[Sequence[int]], batch_size: int = 8) -> list[np.ndarray]:
    """-log p(x_t | x_<t) for t = 1..T-1 of every sequence (float64 arrays; empty for T < 2), longest
    sequences batched first (emotune.eval.lm.token_nlls)."""
    return lm.token_nlls(scorer, seqs, batch_size, longest_first=True)


def perplexity(nlls: Sequence[np.ndarray], average: str = "token") -> float:
    """exp of the mean NLL: `token` weights every token equally, `text` averages per-text means first."""
    nlls = [n for n in nlls if len(n)]
    if not nlls:
        return float("nan")
    if average == "token":
        return math.exp(sum(float(n.sum()) for n in nlls) / sum(len(n) for n in nlls))
    if average == "text":
        return math.exp(float(np.mean([n.mean() for n in nlls])))
    raise ValueError(f"average must be 'token' or 'text', not {average!r}")


def ppl_test(model, tokenizer, texts: Sequence[str], batch_size: int = 8, min_words: int = 20,
             max_tokens: int = 500) -> dict[str, float]:
    """PPL of the model on test texts, keeping the texts the paper's script keeps (>= `min_words`
    space-separated words, <= `max_tokens` tokens). No text left (every one filtered out, or too short
    to score a token): EmotuneError naming the filter, never a silent `nan`."""
    tokenized = tokenize_texts(tokenizer, texts)
    short = sum(len(t.split(" ")) < min_words for t in texts)
    long = sum(len(s) > max_tokens for t, s in zip(texts, tokenized) if len(t.split(" ")) >= min_words)
    seqs = [s for t, s in zip(texts, tokenized) if len(t.split(" ")) >= min_words and len(s) <= max_tokens]
    if not any(len(s) >= 2 for s in seqs):  # nothing to score: the perplexity would be nan
        raise EmotuneError(
            f"ppl_test: none of the {len(texts)} test texts passes the task's filter lm_min_words={min_words} "
            f"(words, {short} have fewer), lm_max_tokens={max_tokens} ({long} have more tokens)"
            + (f", {len(seqs)} left have under 2 tokens" if seqs else "")
            + "; lower lm_min_words / raise lm_max_tokens in the task file, or leave ppl_test out of metrics=")
    nlls = token_nlls(ModelScorer(model, tokenizer), seqs, batch_size)
    return {"ppl_test": perplexity(nlls, "text"), "ppl_test_token": perplexity(nlls, "token"),
            "ppl_test_texts": float(len(seqs))}


def ppl_oracle(oracle: Any, texts: Sequence[str] | None = None, token_ids: Sequence[Sequence[int]] | None = None,
               batch_size: int = 8, tokenizer: Any = None) -> float:
    """Token-weighted perplexity of sample texts under an oracle (a causal LM or an `Oracle`).

    The oracle's own tokenizer (attribute `tokenizer`, or the argument) re-tokenises `texts`; an oracle
    without one is given `token_ids` (the evaluated model's tokens, same vocabulary)."""
    scorer = as_scorer(oracle, tokenizer)
    tok = getattr(scorer, "tokenizer", None) or tokenizer
    if tok is not None and texts is not None:
        seqs = tokenize_texts(tok, texts)
    elif token_ids is not None:
        seqs = [list(s) for s in token_ids]
    else:
        raise EmotuneError("oracle: has no tokenizer, so it needs the samples' token ids")
    return perplexity(token_nlls(scorer, seqs, batch_size), "token")


def _plogq(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """sum_v p(v) log q(v), with 0 * log 0 = 0 (an exact oracle may give zero probabilities)."""
    p = logp.exp()
    return torch.where(p > 0, p * logq, torch.zeros((), dtype=p.dtype, device=p.device)).sum(-1)


@torch.no_grad()
def forward_reverse_ce(model: Any, reference: Any, seqs: Sequence[Sequence[int]], batch_size: int = 8,
                       vocab_size: int | None = None) -> dict[str, float]:
    """Token-level forward CE (-sum p_ref log p_model) and reverse CE (-sum p_model log p_ref), each the
    mean over the T-1 predicting positions of a text, then over texts. Both models see the same token
    ids, so they must share a vocabulary; `vocab_size` keeps the first V entries of both (renormalised)
    when one has a padded output layer."""
    m, r = as_scorer(model), as_scorer(reference)
    fwd: list[float] = []
    rev: list[float] = []
    for _idx, ids, mask in lm.padded_batches([s for s in seqs if len(s) > 1], batch_size, longest_first=True):
        lp_m = m.next_token_logprobs(ids, mask).float()
        lp_r = r.next_token_logprobs(ids, mask).float().to(lp_m.device)
        if vocab_size is not None:
            lp_m = torch.log_softmax(lp_m[..., :vocab_size], -1)
            lp_r = torch.log_softmax(lp_r[..., :vocab_size], -1)
        if lp_m.shape[-1] != lp_r.shape[-1]:
            raise EmotuneError(f"reference: vocabulary of {lp_r.shape[-1]} entries differs from the model's "
                               f"{lp_m.shape[-1]}; both must share a tokenizer (set ce_vocab_size=V to "
                               "compare the first V entries of padded output layers)")
        f = -_plogq(lp_r, lp_m)  # [B, T]
        rv = -_plogq(lp_m, lp_r)
        lengths = mask.sum(1)
        for row in range(ids.shape[0]):
            n = int(lengths[row]) - 1  # distributions predicting tokens 1..T-1
            fwd.append(float(f[row, :n].double().mean()))
            rev.append(float(rv[row, :n].double().mean()))
    if not fwd:
        return {"forward_ce": float("nan"), "reverse_ce": float("nan"), "ce_texts": 0.0}
    return {"forward_ce": float(np.mean(fwd)), "reverse_ce": float(np.mean(rev)), "ce_texts": float(len(fwd))}
