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
from emotune.synthetic.language import SyntheticLanguage

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
        return self.to_tokens(self.lang.next_word_probs(prefix_words)[None])[0]

    def to_tokens(self, word_probs: np.ndarray) -> np.ndarray:
        """Map `[n, W+1]` word (+END) distributions onto the `[n, V]` token vocabulary."""
        out = np.zeros((word_probs.shape[0], self.vocab_size))
        out[:, self.word_token] = word_probs[:, : self.lang.n_words]
        out[:, self.eos] += word_probs[:, self.lang.end]
        return out


@torch.no_grad()
def _model_log_probs(model, batch: list[list[int]], batch_size: int = 32) -> list[np.ndarray]:
    """log q(next | prefix) for every prefix of each id list: `[len(ids), V]` float64 arrays.
    Sequences are right-padded in batches; causal attention keeps real positions exact."""
    out = []
    for start in range(0, len(batch), batch_size):
        chunk = batch[start : start + batch_size]
        width = max(len(ids) for ids in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for i, row in enumerate(chunk):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
        logp = torch.log_softmax(logits.double(), -1).cpu().numpy()
        out += [logp[i, : len(row)] for i, row in enumerate(chunk)]
    return out


def oracle_cross_entropies(model, oracle: TokenOracle, texts: list[str], eps: float = ORACLE_EPS) -> dict[str, float]:
    """Forward and reverse token-level CE between the oracle and the model, averaged over every
    position of `texts` (each prediction after BOS and every word, END included)."""
    fwd, rev, n = 0.0, 0.0, 0
    V = oracle.vocab_size
    all_logq = _model_log_probs(model, [oracle.encode(t) for t in texts])
    for text, logq in zip(texts, all_logq):
        words = oracle.lang.word_ids(text)
        logq = logq[:, :V]
        p = oracle.to_tokens(oracle.lang.all_next_word_probs(words))
        fwd -= float(np.where(p > 0, p * logq, 0.0).sum())
        rev -= float((np.exp(logq) * np.log((1 - eps) * p + eps / V)).sum())
        n += len(words) + 1
    return {"forward_ce": fwd / max(n, 1), "reverse_ce": rev / max(n, 1), "positions": n}


def test_perplexity(model, oracle: TokenOracle, texts: list[str]) -> float:
    """exp(mean NLL) of the model over the tokens of `texts`, END (EOS) included."""
    seqs = [oracle.encode(t) + [oracle.eos] for t in texts]
    nll, n = 0.0, 0
    for ids, logq in zip(seqs, _model_log_probs(model, [s[:-1] for s in seqs])):
        nll -= float(logq[np.arange(len(ids) - 1), ids[1:]].sum())
        n += len(ids) - 1
    return math.exp(nll / max(n, 1))


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


@torch.no_grad()
def oracle_perplexity_of_samples(model, tokenizer, lang: SyntheticLanguage, n_samples: int = 64,
                                 max_new_tokens: int = 96, seed: int = 0, batch_size: int = 64,
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
