"""The synthetic language's exact distribution seen through a tokenizer: the oracle of the paper's Table 2 /
Fig. 2 metrics. The metrics that run a model against it are emotune.eval.oracle_task (this package never
imports the evaluator or runs a model).

With a tokenizer in which every word of the language is one token (the demo's sentencepiece
tokenizer is checked for this), the oracle's next-word distribution is a next-*token* distribution
(END = the EOS token), so the model and the oracle compare position by position:

- forward CE   `-Σ_v p(v) log q(v)`  (recall: does the model cover what the language says?)
- reverse CE   `-Σ_v q(v) log p_ε(v)` with `p_ε = (1-ε) p + ε/V` (precision: does the model say only
  what the language says? ε keeps it finite where the model puts mass on impossible tokens)
- PPL_test     the model's perplexity on held-out text of the language
- PPL_oracle   the oracle's (ε-smoothed) perplexity of text sampled from the model: how fluent the
  model's own samples are. A word the language cannot produce at that point costs `log(ε/(W+1))`,
  and the topic posterior is then left as it was.
"""

from __future__ import annotations

import math

import numpy as np

from emotune.errors import EmotuneError
from emotune.synthetic.language import SyntheticLanguage
from emotune.tasks.schema import ORACLE_EPS  # the smoothing's default, the `kind: oracle` task file's too


class TokenOracle:
    """The synthetic language seen through a word-aligned tokenizer."""

    def __init__(self, lang: SyntheticLanguage, tokenizer, vocab_size: int | None = None):
        self.lang = lang
        self.vocab_size = vocab_size or len(tokenizer)
        self.eos = tokenizer.eos_token_id
        self.bos = tokenizer.bos_token_id
        ids = []
        for word in lang.words:
            enc = tokenizer(word, add_special_tokens=False)["input_ids"]
            if len(enc) != 1:
                raise EmotuneError(f"tokenizer splits the word {word!r} into {len(enc)} tokens: the oracle needs one "
                                   "token per word (train the tokenizer with a larger vocabulary)")
            ids.append(enc[0])
        self.word_token = np.array(ids)
        self.token_word = {t: w for w, t in enumerate(ids)}

    def encode(self, text: str) -> list[int]:
        """BOS + one token per word (no EOS)."""
        return [self.bos] + [int(self.word_token[w]) for w in self.lang.word_ids(text)]

    def next_token_probs(self, prefix_words: list[int]) -> np.ndarray:
        return self.to_tokens(self.lang.next_word_probs(prefix_words)[None])[0]

    def to_tokens(self, word_probs: np.ndarray) -> np.ndarray:
        """Map `[n, W+1]` word (+END) distributions onto the `[n, V]` token vocabulary."""
        out = np.zeros((word_probs.shape[0], self.vocab_size))
        out[:, self.word_token] = word_probs[:, : self.lang.n_words]
        out[:, self.eos] += word_probs[:, self.lang.end]
        return out


def smoothed_oracle_log_prob(lang: SyntheticLanguage, words: list[str], ended: bool, eps: float = ORACLE_EPS) -> tuple[float, int]:
    """ε-smoothed oracle log-probability of a word sequence (and END if `ended`), and its event count."""
    uniform = eps / (lang.n_words + 1)
    index = {w: i for i, w in enumerate(lang.words)}
    events = [index.get(w, -1) for w in words] + ([lang.end] if ended else [])
    state = lang.initial_state()
    p, total = lang.distribution(state), 0.0
    for event in events:
        p_event = 0.0 if event < 0 else float(p[event])
        total += math.log((1 - eps) * p_event + uniform)
        if 0 <= event < lang.end and p_event > 0:  # an impossible word leaves the state as it was
            state = lang.advance(state, event)
            p = lang.distribution(state)
    return total, len(events)
