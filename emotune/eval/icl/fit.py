"""Prompts longer than the model's positions: demos dropped from the end (ICL and MMLU tasks alike).

The rule of OpenICL 0.1.8's `PPLInferencer` (`max_model_token_num`) and OpenCompass' PPL inferencer
(`max_seq_len`), which share it: the labels are taken in template order; while the prompt of the current
label has more than `max_seq_len` tokens (counted as the tokenizer encodes it, special tokens included)
and demos are left, the last demo (the least similar one) is dropped and the prompt rebuilt. The demos
dropped for one label stay dropped for the labels after it, while a label already done keeps the prompt
it was built with — so, where a later label's prompt is longer, earlier labels are scored with more demos.
Under `scoring: continuation` (not OpenICL's rule) the score of a label is the NLL after the candidates'
common prefix, which is only comparable on one context: there every candidate gets the demos left at the
end. A prompt too long even without demos is cut from the left to its last `max_seq_len` tokens, as
OpenCompass' HF model (truncation_side left) does; OpenICL's tokenizer call would cut from the right
(the label's tokens first, making the candidates equal).

`max_seq_len` is `max_tokens` where given, else the model's positions, and never more than those: a
token past a learned position table has no embedding (GPT-2: IndexError), past RoPE's range it is garbage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

# the model config keys OpenCompass' HF model reads max_seq_len from, in its order (+ GPT-2's n_positions)
POSITION_KEYS = ("max_position_embeddings", "seq_length", "model_max_length", "n_positions")
# in every ICL / MMLU resume key: results made by an evaluator without this rule are not reused
FIT_RULE = "demos dropped from the end per label (OpenICL max_model_token_num), left cut"


def model_max_positions(model) -> int | None:
    """The longest sequence the model takes (its config's position limit), None where it states none."""
    config = getattr(model, "config", None)
    for key in POSITION_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def max_seq_len(model, max_tokens: int | None) -> int | None:
    """`max_tokens` where given, else the model's positions; never more than the positions."""
    limits = [x for x in (max_tokens, model_max_positions(model)) if x is not None]
    return min(limits) if limits else None


@dataclass
class Fitted:
    prompts: list[str]
    ids: list[list[int]]
    kept: int  # demos left at the end (the last label's)
    kept_by_candidate: list[int] = field(default_factory=list)
    cut: int = 0  # tokens cut from the left of the longest candidate

    def record(self, n_demos: int, labels: list) -> dict:
        """The per-row fields of the predictions file (none where nothing was dropped or cut)."""
        out: dict = {}
        if self.kept < n_demos:
            out["demos_dropped"] = n_demos - self.kept
        if len(set(self.kept_by_candidate)) > 1:
            out["demos_kept_by_label"] = {str(lab): k for lab, k in zip(labels, self.kept_by_candidate)}
        if self.cut:
            out["truncated_tokens"] = self.cut
        return out


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text)["input_ids"])


def fit_prompts(build: Callable[[int], list[str]], n_demos: int, prompts: list[str], ids: list[list[int]],
                tokenizer, limit: int | None, same_demos: bool = False) -> Fitted:
    """`build(n)`: every candidate's prompt with the first n demos; `prompts` / `ids`: those of `n_demos`.
    OpenICL's loop (module docstring); `same_demos`: every candidate gets the demos left at the end."""
    if limit is None or max(len(t) for t in ids) <= limit:
        return Fitted(prompts, ids, n_demos, [n_demos] * len(prompts))
    prompts, ids, n, kept = list(prompts), list(ids), n_demos, []
    for c in range(len(prompts)):
        if n < n_demos:  # the demos an earlier label dropped
            prompts[c] = build(n)[c]
            ids[c] = _encode(tokenizer, prompts[c])
        while n > 0 and len(ids[c]) > limit:
            n -= 1
            prompts[c] = build(n)[c]
            ids[c] = _encode(tokenizer, prompts[c])
        kept.append(n)
    if same_demos and min(kept) < max(kept):
        prompts = build(n)
        ids = [_encode(tokenizer, p) for p in prompts]
        kept = [n] * len(prompts)
    cut = max(max(len(t) for t in ids) - limit, 0)
    if cut:
        ids = [t[-limit:] for t in ids]
    return Fitted(prompts, ids, n, kept, cut)
