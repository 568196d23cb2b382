"""`kind: oracle` tasks: the demo's synthetic language scored against its exact distribution.

The metrics themselves are emotune.synthetic.oracle; this is the evaluator's side (data folder, summary
entry, predictions file), kept here so that emotune.synthetic never imports the evaluator.
"""

from __future__ import annotations

import time
from pathlib import Path

from emotune.atomic import write_jsonl
from emotune.errors import EmotuneError
from emotune.eval.summary import TaskResult
from emotune.synthetic.language import load_demo_language
from emotune.synthetic.oracle import (ORACLE_EPS, TokenOracle, oracle_cross_entropies, oracle_perplexity_of_samples,
                                      test_perplexity)


def run_oracle_task(task, model, tokenizer, out_dir, data_dir=None, limit=None, **options):
    """`kind: oracle` tasks: the Table 2 / Fig. 2 metrics against the synthetic language in `data_dir`.

    Task keys (all optional): `n_samples` (64), `max_new_tokens` (128), `seed` (0), `n_texts` (100,
    validation/test texts scored), `eps` (1e-6). Returns an emotune.eval.summary.TaskResult.
    """
    start = time.time()
    raw = getattr(task, "raw", task) or {}
    if data_dir is None:
        raise EmotuneError(f"{getattr(task, 'source', 'task')}: kind 'oracle' needs data_dir=DIR (the demo's data folder)")
    data = Path(data_dir)
    if not (data / "language.json").exists() and (data / task.name / "language.json").exists():
        data = data / task.name
    lang = load_demo_language(data)
    n_texts = int(limit or raw.get("n_texts", 100))
    valid = [t for t in (data / "valid.txt").read_text().splitlines() if t.strip()][:n_texts]
    test = [t for t in (data / "test.txt").read_text().splitlines() if t.strip()][:n_texts]
    oracle = TokenOracle(lang, tokenizer, vocab_size=model.config.vocab_size)
    eps = float(raw.get("eps", ORACLE_EPS))
    model.eval()
    ce = oracle_cross_entropies(model, oracle, valid, eps)
    samples = oracle_perplexity_of_samples(model, tokenizer, lang, n_samples=int(raw.get("n_samples", 64)),
                                           max_new_tokens=int(raw.get("max_new_tokens", 128)),
                                           seed=int(raw.get("seed", 0)), eps=eps)
    metrics = {"ppl_test": test_perplexity(model, oracle, test), "ppl_oracle": samples["ppl_oracle"],
               "forward_ce": ce["forward_ce"], "reverse_ce": ce["reverse_ce"],
               "samples_ended": samples["ended_fraction"]}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pred = out / f"{task.name}.predictions.jsonl"
    write_jsonl(pred, [metrics])
    return TaskResult(task=task.name, kind="oracle", metrics=metrics, n_examples=len(valid) + len(test),
                      predictions=pred.name, seconds=time.time() - start,
                      settings={"eps": eps, "n_texts": n_texts, "data_dir": str(data)})
