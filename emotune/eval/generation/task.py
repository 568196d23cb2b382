"""Open-ended generation evaluation (docs/generation-eval.md; the paper's Tables 1-2 and Fig. 2).

A task file (`kind: generation`) names a corpus, its text column and the prefix / continuation
lengths. The recipe:

 1. prefixes   scan the first `max_rows` test rows; keep rows with >= `min_chars` characters, at least
               prefix + continuation + `extra_words` words and no `==` (a WikiText heading); the prefix
               is the first k whitespace words, the human continuation the next m words.
 2. sampling   unbiased ancestral sampling (temperature 1, no top-k / top-p), exactly `new_tokens` new
               tokens at least and `new_tokens + 1` at most (EOS is masked out until the minimum is
               reached, as `min_new_tokens` does in HF generate; the task key `eos: ignore` samples exactly
               `new_tokens`, EOS neither masked nor stopping); `runs` samples per prefix (default 5).
 3. raw JSONL  every sample with its prefix, human continuation, seed and tokens: `<task>.generations.jsonl`.
 4. metrics    MAUVE of prefix+sample (q) against prefix+human (p) per run, mean and std over runs
               and the human-vs-human ceiling (protocol.py, shared with the oracle task); ROUGE-1/2/L;
               PPL_test of the model on the test text; PPL_oracle of the samples under an oracle model;
               forward / reverse token-level CE against a reference model on validation text
               (lm_metrics.py). Metrics whose model is not given are skipped.

Seeding and batch invariance: see sampling.py.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from emotune.atomic import write_jsonl
from emotune.errors import EmotuneError
from emotune.eval.generation.sampling import generate_samples
from emotune.eval.options import METRICS, generation_options  # noqa: F401 - METRICS: the metric names
from emotune.eval.summary import TaskResult
from emotune.tasks.schema import GenerationTaskFile, read_task_file

SUITE = ["generation-wikitext2", "generation-wikitext103", "generation-webtext", "generation-ptb",
         "generation-writingprompts", "generation-agnews"]
# ---------------------------------------------------------------- the task file

@dataclass
class GenerationSpec:
    """A generation task's settings, flat (the prefix filter's keys at the top)."""

    name: str
    source: str
    text_column: str
    prefix_words: int
    continuation_words: int
    new_tokens: int  # min_new_tokens; max_new_tokens = new_tokens + 1
    eos: str = "min_new_tokens"  # the EOS rule (sampling.sample_runs)
    test_split: str = "test"
    ce_split: str | None = "validation"
    max_rows: int = 4000
    min_chars: int = 100
    extra_words: int = 10
    exclude: list[str] = field(default_factory=lambda: ["=="])
    lm_min_words: int = 20
    lm_max_tokens: int = 500


def spec_from_task(task: Any) -> GenerationSpec:
    """Read and check the generation keys of a task (a tasks.Task or a plain dict)."""
    raw = getattr(task, "raw", task)
    source = getattr(task, "source", "<memory>")
    if not isinstance(raw, dict):
        raise EmotuneError(f"{source}: a task must be a mapping")
    if raw.get("kind", "generation") != "generation":
        raise EmotuneError(f"{source}: key 'kind' is {raw.get('kind')!r}, not 'generation'")
    cfg = {k: v for k, v in raw.items() if v is not None or k != "prefix_filter"}
    f = read_task_file(GenerationTaskFile, cfg, source)
    ce_split = None if f.ce_split in (None, "none") else str(f.ce_split)
    return GenerationSpec(name=str(f.name), source=source, text_column=f.text_column, prefix_words=f.prefix_words,
                          continuation_words=f.continuation_words, new_tokens=f.new_tokens, eos=f.eos,
                          test_split=str(f.test_split), ce_split=ce_split, **f.prefix_filter.model_dump(),
                          lm_min_words=f.lm_min_words, lm_max_tokens=f.lm_max_tokens)


def _as_task(task: Any):
    """A tasks.Task for the data loader (a plain dict is parsed with the task loader)."""
    from emotune.tasks.files import Task, task_from_dict

    if isinstance(task, Task):
        return task
    if isinstance(task, dict):
        return task_from_dict(task)
    raise EmotuneError(f"cannot read a generation task from a {type(task).__name__}")


# ---------------------------------------------------------------- 1. prefixes

@dataclass
class Example:
    index: int  # row in the test split
    prefix: str
    continuation: str  # the human continuation (m words)

    @property
    def human_text(self) -> str:
        return f"{self.prefix} {self.continuation}"


def select_prefixes(rows: Sequence[dict], spec: GenerationSpec) -> list[Example]:
    """The paper's prefix rule over the first `max_rows` rows (see the module docstring)."""
    k, m = spec.prefix_words, spec.continuation_words
    out = []
    for i, row in enumerate(rows[: spec.max_rows]):
        text = row.get(spec.text_column)
        if not isinstance(text, str):
            continue
        words = text.split()
        if len(text) < spec.min_chars or len(words) < k + m + spec.extra_words or any(s in text for s in spec.exclude):
            continue
        out.append(Example(i, " ".join(words[:k]), " ".join(words[k : k + m])))
    return out


# ---------------------------------------------------------------- 4. the task

def _options(task: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    task_opts = dict(getattr(task, "options", None) or (task.get("options") if isinstance(task, dict) else None) or {})
    return generation_options(task_opts, kwargs, getattr(task, "source", "<memory>"))


def _feature_cache_dir(opts: dict[str, Any]) -> Path:
    if opts["feature_cache_dir"]:
        return Path(opts["feature_cache_dir"])
    root = opts["cache_dir"] or os.environ.get("EMOTUNE_CACHE") or Path.home() / ".cache" / "emotune"
    return Path(root) / "mauve-features"


def _dataset_id(task) -> str:
    ds = task.dataset
    if ds.get("path"):
        return "-".join(str(x) for x in (ds["path"], ds.get("name"), ds.get("revision")) if x)
    return task.name


def _load_rows(task, split: str, data_dir, column: str) -> list[dict]:
    from emotune.eval.task_data import check_columns, load_split

    try:
        rows = load_split(task, split, data_dir, key="test_split" if split == task.test_split else "ce_split")
    except EmotuneError as err:
        if data_dir is None and task.dataset.get("data_files") and "not found" in str(err):
            raise EmotuneError(f"{err} (task {task.name!r}: key 'dataset.data_files' in {task.source}; "
                               "put the file there or pass data_dir=DIR)") from None
        raise
    check_columns(task, rows, split, [column])  # every row, not only the first (key 'text_column')
    return rows


def _lm_texts(rows: Sequence[dict], column: str, limit: int | None) -> list[str]:
    texts = [r[column] for r in rows if isinstance(r.get(column), str) and r[column].strip()]
    return texts[:limit] if limit else texts


def _resolve_model(obj: Any, key: str, opts: dict[str, Any]):
    """(scorer-able object, tokenizer or None) from a path, a loaded model or an Oracle."""
    from emotune.eval.lm import load_causal_lm

    if isinstance(obj, (str, os.PathLike)):  # the oracle / reference roles are scored in float32
        return load_causal_lm(str(obj), key, "float32", opts["device"], bool(opts["trust_remote_code"]))
    return obj, getattr(obj, "tokenizer", None)


def _mauve(task, spec: GenerationSpec, opts: dict[str, Any], records: list[dict], examples: list[Example],
           human: list[str], metrics: dict[str, float], settings: dict[str, Any]) -> None:
    """MAUVE by the one protocol (protocol.py): prefix+sample against prefix+human per run, the human features
    cached per dataset; the ceiling is human against human (two random halves, one halving per run)."""
    from emotune.eval.generation import protocol
    from emotune.eval.generation.mauve import cached_features, make_featurizer

    fz = make_featurizer(str(opts["featurizer"]), opts["max_text_length"], opts["pooling"], device=opts["device"],
                         trust_remote_code=bool(opts["trust_remote_code"]))
    p_feats, cache_file, hit = cached_features(fz, human, _feature_cache_dir(opts), _dataset_id(task),
                                               spec.test_split)
    q_runs = protocol.featurise_runs(fz, [[r["text"] for r in records if r["run"] == run] for run in range(opts["runs"])])
    truncated = sum(n > fz.max_length for n in fz.token_lengths(human + [r["text"] for r in records]))
    ceiling = protocol.split_half_ceiling(p_feats, opts["runs"], opts["seed"]) if len(human) >= 4 else [float("nan")]
    metrics.update(protocol.protocol_metrics(p_feats, q_runs, ceiling))
    settings.update({"featurizer": fz.identity, "max_text_length": fz.max_length, "pooling": fz.pooling,
                     "truncated_texts": truncated,
                     "mauve_ceiling": "human vs human: MAUVE of one random half of the human texts against the "
                                      "other (n/2 vs n/2), one halving per run",
                     "human_feature_cache": str(cache_file) if cache_file else None,
                     "human_features_cached": hit,
                     "mauve": "mauve-text defaults: buckets n/10, scaling 5, seed 25"})


def _model_metrics(task, spec: GenerationSpec, opts: dict[str, Any], model, tokenizer, by_run: list[list[dict]],
                   metrics: dict[str, float], settings: dict[str, Any]) -> None:
    """PPL_oracle of the samples under an oracle model; forward / reverse CE against a reference model."""
    from emotune.eval.generation import lm_metrics

    # 4d. PPL_oracle of the samples
    if "ppl_oracle" in opts["metrics"] and opts["oracle"] is not None:
        oracle, otok = _resolve_model(opts["oracle"], "oracle", opts)
        ppl_runs = [lm_metrics.ppl_oracle(oracle, [r["text"] for r in rr],
                                          [r["prompt_tokens"] + r["tokens"] for r in rr], opts["batch_size"], otok)
                    for rr in by_run]
        metrics["ppl_oracle"] = float(np.mean(ppl_runs))
        metrics["ppl_oracle_std"] = float(np.std(ppl_runs, ddof=1)) if len(ppl_runs) > 1 else 0.0
        named = isinstance(opts["oracle"], (str, os.PathLike))
        settings["oracle"] = str(opts["oracle"]) if named else type(oracle).__name__

    # 4e. forward / reverse CE against a reference model, on validation text
    if "ce" in opts["metrics"] and opts["reference"] is not None and spec.ce_split:
        reference, _ = _resolve_model(opts["reference"], "reference", opts)
        ce_rows = _load_rows(task, spec.ce_split, opts["data_dir"], spec.text_column)
        texts = _lm_texts(ce_rows, spec.text_column, opts["lm_limit"])
        seqs = [s for t, s in zip(texts, lm_metrics.tokenize_texts(tokenizer, texts))
                if len(t.split(" ")) >= spec.lm_min_words and len(s) <= spec.lm_max_tokens]
        metrics.update(lm_metrics.forward_reverse_ce(model, reference, seqs, opts["batch_size"], opts["ce_vocab_size"]))
        settings.update({"ce_split": spec.ce_split, "reference": str(opts["reference"])
                         if isinstance(opts["reference"], (str, os.PathLike)) else type(reference).__name__})


def run_generation_task(task: Any, model, tokenizer, out_dir: str | os.PathLike, **options: Any) -> TaskResult:
    """Run one generation task on a loaded model; write `<out_dir>/<task>.generations.jsonl`."""
    # A little over the usual length: it reads as the protocol's order (prefixes, samples, the
    # predictions file, then each metric family), and its parts already live in _mauve / _model_metrics.
    from emotune.eval.generation import lm_metrics
    from emotune.eval.generation.rouge import rouge

    t_start = time.time()
    task = _as_task(task)
    spec = spec_from_task(task)
    opts = _options(task, options)
    out_dir = Path(out_dir)
    model.eval()
    opts["device"] = opts["device"] or str(next(model.parameters()).device)  # helpers go where the model is

    # 1. prefixes
    rows = _load_rows(task, spec.test_split, opts["data_dir"], spec.text_column)
    examples = select_prefixes(rows, spec)
    if opts["limit"]:
        examples = examples[: opts["limit"]]
    if not examples:
        words = spec.prefix_words + spec.continuation_words + spec.extra_words
        raise EmotuneError(f"{task.source}: no test row of task {task.name!r} passes the prefix filter (>= "
                           f"{spec.min_chars} characters, >= {words} words, none of {spec.exclude}) in the "
                           f"first {spec.max_rows} rows")

    # 2-3. samples, saved before any metric runs (a failing metric never loses them)
    records = generate_samples(model, tokenizer, examples, opts["runs"], opts["seed"], spec.new_tokens,
                               opts["gen_batch_size"], bool(opts["progress"]), spec.eos)
    pred_name = f"{task.name}.generations.jsonl"
    write_jsonl(out_dir / pred_name, records)
    by_run = [[r for r in records if r["run"] == run] for run in range(opts["runs"])]
    human = [ex.human_text for ex in examples]

    metrics: dict[str, float] = {}
    settings: dict[str, Any] = {
        "prefix_words": spec.prefix_words, "continuation_words": spec.continuation_words,
        "eos": spec.eos, "min_new_tokens": spec.new_tokens if spec.eos == "min_new_tokens" else 0,
        "max_new_tokens": spec.new_tokens + (spec.eos == "min_new_tokens"), "runs": opts["runs"],
        "seed": opts["seed"], "sampling": "ancestral (temperature 1, top_k 0, top_p 1), per-prefix generators",
        "test_split": spec.test_split, "prefix_filter": {"max_rows": spec.max_rows, "min_chars": spec.min_chars,
                                                         "extra_words": spec.extra_words, "exclude": spec.exclude},
        "dataset": _dataset_id(task), "metrics": opts["metrics"],
    }
    metrics["mean_new_tokens"] = float(np.mean([r["n_new_tokens"] for r in records]))
    metrics["samples_ended"] = float(np.mean([r["eos"] for r in records]))  # drew an EOS (diagnostic)

    # 4a. MAUVE
    featurizer = opts["featurizer"]
    if "mauve" in opts["metrics"] and featurizer not in (None, "none"):
        _mauve(task, spec, opts, records, examples, human, metrics, settings)

    # 4b. ROUGE: as the paper's script (prefix + sample vs prefix + human) and on the continuations alone
    if "rouge" in opts["metrics"]:
        full_runs = [rouge([r["text"] for r in rr], human) for rr in by_run]
        cont_runs = [rouge([r["sample"] for r in rr], [ex.continuation for ex in examples]) for rr in by_run]
        for key in full_runs[0]:
            metrics[key] = float(np.mean([x[key] for x in full_runs]))
            metrics[f"{key}_continuation"] = float(np.mean([x[key] for x in cont_runs]))

    # 4c. PPL_test of the model on the test text
    if "ppl_test" in opts["metrics"]:
        texts = _lm_texts(rows, spec.text_column, opts["lm_limit"])
        res = lm_metrics.ppl_test(model, tokenizer, texts, opts["batch_size"], spec.lm_min_words, spec.lm_max_tokens)
        metrics.update(res)

    # 4d-e. PPL_oracle of the samples, forward / reverse CE against a reference model
    _model_metrics(task, spec, opts, model, tokenizer, by_run, metrics, settings)

    return TaskResult(task=task.name, kind="generation", metrics=metrics, n_examples=len(examples),
                      predictions=pred_name, seconds=time.time() - t_start, settings=settings)


__all__ = ["SUITE", "GenerationSpec", "Example", "spec_from_task", "select_prefixes", "run_generation_task"]
