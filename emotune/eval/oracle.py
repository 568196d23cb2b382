"""Oracle metrics of the paper's Table 2 / Fig. 2 against the synthetic language's exact distribution.

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
import torch

from emotune.errors import EmotuneError
from emotune.eval.synthetic import SyntheticLanguage

ORACLE_EPS = 1e-6


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
        p = self.lang.next_word_probs(prefix_words)
        out = np.zeros(self.vocab_size)
        out[self.word_token] = p[: self.lang.n_words]
        out[self.eos] += p[self.lang.end]
        return out


@torch.no_grad()
def _model_log_probs(model, ids: list[int]) -> np.ndarray:
    """log q(next | prefix) for every prefix of `ids`: [len(ids), V] in float64."""
    logits = model(torch.tensor([ids], device=model.device)).logits[0]
    return torch.log_softmax(logits.double(), -1).cpu().numpy()


def oracle_cross_entropies(model, oracle: TokenOracle, texts: list[str], eps: float = ORACLE_EPS) -> dict[str, float]:
    """Forward and reverse token-level CE between the oracle and the model, averaged over every
    position of `texts` (each prediction after BOS and every word, END included)."""
    fwd, rev, n = 0.0, 0.0, 0
    V = oracle.vocab_size
    for text in texts:
        words = oracle.lang.word_ids(text)
        logq = _model_log_probs(model, oracle.encode(text))[:, :V]
        for t in range(len(words) + 1):
            p = oracle.next_token_probs(words[:t])
            q = np.exp(logq[t])
            support = p > 0
            fwd -= float((p[support] * logq[t][support]).sum())
            rev -= float((q * np.log((1 - eps) * p + eps / V)).sum())
            n += 1
    return {"forward_ce": fwd / max(n, 1), "reverse_ce": rev / max(n, 1), "positions": n}


def test_perplexity(model, oracle: TokenOracle, texts: list[str]) -> float:
    """exp(mean NLL) of the model over the tokens of `texts`, END (EOS) included."""
    nll, n = 0.0, 0
    for text in texts:
        ids = oracle.encode(text) + [oracle.eos]
        logq = _model_log_probs(model, ids[:-1])
        nll -= float(sum(logq[t, ids[t + 1]] for t in range(len(ids) - 1)))
        n += len(ids) - 1
    return math.exp(nll / max(n, 1))


def smoothed_oracle_log_prob(lang: SyntheticLanguage, words: list[str], ended: bool, eps: float = ORACLE_EPS) -> tuple[float, int]:
    """ε-smoothed oracle log-probability of a word sequence (and END if `ended`), and its event count."""
    uniform = eps / (lang.n_words + 1)
    total, known = 0.0, []
    index = {w: i for i, w in enumerate(lang.words)}
    events = [index.get(w, -1) for w in words] + ([lang.end] if ended else [])
    for event in events:
        try:
            p = lang.next_word_probs(known)
        except ValueError:  # the prefix became impossible: the oracle no longer predicts anything
            p = None
        p_event = 0.0 if p is None or event < 0 else float(p[event])
        total += math.log((1 - eps) * p_event + uniform)
        if event >= 0 and event != lang.end and p_event > 0:
            known.append(event)
    return total, len(events)


@torch.no_grad()
def oracle_perplexity_of_samples(model, tokenizer, lang: SyntheticLanguage, n_samples: int = 64,
                                 max_new_tokens: int = 96, seed: int = 0, batch_size: int = 32,
                                 eps: float = ORACLE_EPS) -> dict[str, float]:
    """Sample texts from BOS by unbiased ancestral sampling and score them with the oracle."""
    torch.manual_seed(seed)
    total, events, ended_count = 0.0, 0, 0
    for start in range(0, n_samples, batch_size):
        b = min(batch_size, n_samples - start)
        bos = torch.full((b, 1), tokenizer.bos_token_id, device=model.device)
        out = model.generate(bos, attention_mask=torch.ones_like(bos), do_sample=True, top_k=0, top_p=1.0,
                             temperature=1.0, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.eos_token_id)
        for row in out[:, 1:].tolist():
            ended = tokenizer.eos_token_id in row
            if ended:
                row = row[: row.index(tokenizer.eos_token_id)]
            words = tokenizer.decode(row, skip_special_tokens=True).split()
            lp, k = smoothed_oracle_log_prob(lang, words, ended, eps)
            total += lp
            events += k
            ended_count += int(ended)
    return {"ppl_oracle": math.exp(-total / max(events, 1)), "ended_fraction": ended_count / max(n_samples, 1)}
