"""In-context classification, OpenICL protocol (docs/evaluation.md): TopK demos + lowest-perplexity label.

For each test row: retrieve `ice_num` demos from the index split (most similar first), write each demo as its
gold label's template, ICE block = '\\n'.join(demos) + '\\n' (OpenICL's ice_separator and ice_eos_token),
candidate l = templates[l] with the ICE block at its ice token (in front if it has none) and the test input
filled in; a prompt longer than the model's positions (or `max_tokens`) loses its least similar demos
(fit.py); score every candidate (scorer.py) and predict the lowest score. Writes
`<out_dir>/<task>.predictions.jsonl` (every candidate prompt included) and returns a TaskResult.

A retriever is any object with `retrieve(index_texts, query_texts, k, task=...)` and `settings()`; one that
depends on the evaluated model (TopkRetriever's round trip) also has `for_model(tokenizer)`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from emotune.atomic import write_jsonl
from emotune.eval.icl.fit import fit_prompts, max_seq_len
from emotune.eval.icl.scorer import score_groups
from emotune.eval.summary import TaskResult
from emotune.eval.task_data import check_columns, load_split
from emotune.tasks.metrics import icl_metrics, row_counts
from emotune.tasks.shards import parse_shard, shard_range, shard_settings
from emotune.tasks.task import Task

ICE_SEPARATOR = "\n"
ICE_EOS = "\n"


def build_ice(task: Task, index_rows: list[dict], demo_ids: list[int], index_labels: list[Any]) -> str:
    return ICE_SEPARATOR.join(task.fill(index_labels[i], index_rows[i]) for i in demo_ids) + ICE_EOS


def tokenize_groups(tokenizer, prompts: list[list[str]]) -> list[list[list[int]]]:
    """Each candidate prompt tokenised on its own (BOS as the tokenizer adds it, no padding, no truncation)."""
    flat = tokenizer([p for cands in prompts for p in cands])["input_ids"] if prompts else []
    out, k = [], 0
    for cands in prompts:
        out.append([list(ids) for ids in flat[k : k + len(cands)]])
        k += len(cands)
    return out


def openicl_ignore_id(tokenizer) -> int | None:
    """OpenICL pads with EOS and counts `input_ids != pad`: every token equal to EOS is left out of the NLL
    sum and of the length T. That includes a BOS that *is* EOS (OPT prepends `</s>`), which OpenICL thus
    does not count in T."""
    return tokenizer.eos_token_id


def prompt_record(prompts: list[str], labels: list) -> dict:
    """The candidate prompts of one test input for the predictions file, their common text stored once:
    the prompt of label l is `prompt_prefix + prompt_endings[l]`."""
    n = len(os.path.commonprefix(prompts)) if prompts else 0
    return {"prompt_prefix": prompts[0][:n] if prompts else "",
            "prompt_endings": {str(lab): p[n:] for lab, p in zip(labels, prompts)}}


def prepare(task: Task, retriever, data_dir=None, limit: int | None = None, tokenizer=None):
    """Rows, retrieved demo ids and candidate prompt strings of one ICL task (no language model needed;
    `tokenizer`, the evaluated model's, is what a retriever that round-trips texts through it needs)."""
    index_rows = load_split(task, task.index_split, data_dir, key="index_split")
    test_rows = load_split(task, task.test_split, data_dir, key="test_split")
    needed = [*task.input_columns, task.label_column]
    check_columns(task, index_rows, task.index_split, needed)
    check_columns(task, test_rows, task.test_split, needed)
    if limit is not None:
        test_rows = test_rows[:limit]
    index_labels = [task.label_key(r[task.label_column], f"split {task.index_split!r} row {i}")
                    for i, r in enumerate(index_rows)]
    gold = [task.label_key(r[task.label_column], f"split {task.test_split!r} row {i}") for i, r in enumerate(test_rows)]
    if tokenizer is not None and hasattr(retriever, "for_model"):
        retriever = retriever.for_model(tokenizer)
    demo_ids = retriever.retrieve([task.input_text(r) for r in index_rows], [task.input_text(r) for r in test_rows],
                                  task.ice_num, task=task.name)
    prompts = [candidates(task, index_rows, index_labels, d, row) for d, row in zip(demo_ids, test_rows)]
    return test_rows, gold, demo_ids, prompts, (index_rows, index_labels)


def candidates(task: Task, index_rows, index_labels, demo_ids: list[int], row: dict) -> list[str]:
    ice = build_ice(task, index_rows, demo_ids, index_labels)
    return [task.prompt(label, row, ice) for label in task.labels]


def bayes_labels(task: Task, test_rows: list[dict]) -> list[Any] | None:
    """The Bayes-optimal label of every test row, from the column `options.bayes_column` names (a task whose
    exact posterior is known, like the demo's synthetic language): its accuracy is the task's ceiling,
    reported as `bayes_accuracy` beside the model's. None when the task names no such column."""
    column = task.options.get("bayes_column")
    if column is None:
        return None
    check_columns(task, test_rows, task.test_split, [str(column)])
    return [task.label_key(r[column], f"split {task.test_split!r} row {i} column {column!r}")
            for i, r in enumerate(test_rows)]


def run_icl_task(task: Task, model, tokenizer, out_dir: str | os.PathLike, *, retriever, data_dir=None,
                 scoring: str | None = None, shared_prefix: bool = True, batch_size: int = 8,
                 limit: int | None = None, max_tokens: int | None = None, progress: bool = True,
                 shard: str | None = None, **_: Any) -> TaskResult:
    """The other `emotune eval` options are ignored (`**_`: the evaluator passes every one, each kind takes
    its own). `shard="K/N"`: only the K-th of N contiguous ranges of the test rows (emotune.tasks.shards). Demos are
    still retrieved, prompts built and tokenised for every row, so that the scorer makes exactly the whole
    run's model calls for the shard's rows: its records are the whole run's, byte for byte."""
    start = time.time()
    scoring = scoring or task.options.get("scoring", "full")
    test_rows, gold, demo_ids, prompts, index = prepare(task, retriever, data_dir, limit, tokenizer)
    bayes = bayes_labels(task, test_rows)  # before the model runs: a missing column fails in a second
    groups = tokenize_groups(tokenizer, prompts)
    # OpenICL's max_model_token_num, by default the model's positions (emotune.eval.icl.fit)
    seq_len, n_demos, fitted = max_seq_len(model, max_tokens), [len(d) for d in demo_ids], []
    for i, row in enumerate(test_rows):
        def build(n, ids=demo_ids[i], row=row):
            return candidates(task, *index, ids[:n], row)
        fitted.append(fit_prompts(build, n_demos[i], prompts[i], groups[i], tokenizer, seq_len,
                                  same_demos=scoring == "continuation"))
        prompts[i], groups[i], demo_ids[i] = fitted[i].prompts, fitted[i].ids, demo_ids[i][:fitted[i].kept]
    selected, shard_info = range(len(test_rows)), {}
    if shard is not None:
        k, n_shards = parse_shard(shard)
        selected = shard_range(len(test_rows), k, n_shards)
        shard_info = shard_settings(selected, k, n_shards, len(test_rows))
    scored = score_groups(model, groups, rule=scoring, shared_prefix=shared_prefix, batch_size=batch_size,
                          ignore_id=openicl_ignore_id(tokenizer), progress=progress,
                          select=selected if shard is not None else None)
    labels = task.labels
    records = []
    for i in selected:
        row = test_rows[i]
        pred = labels[scored.predictions[i]]
        ok = pred == gold[i]
        extra = {} if bayes is None else {"bayes": bayes[i], "bayes_correct": bayes[i] == gold[i]}
        records.append({"id": i, "input": task.input_text(row), "demo_ids": demo_ids[i],
                        "scores": {str(lab): sc for lab, sc in zip(labels, scored.scores[i])},
                        "prediction": pred, "gold": gold[i], "correct": bool(ok), **extra,
                        **fitted[i].record(n_demos[i], labels), **prompt_record(prompts[i], labels)})
    out_dir = Path(out_dir)
    pred_name = f"{task.name}.predictions.jsonl"
    write_jsonl(out_dir / pred_name, records)
    n = len(records)
    settings = {"scoring": scoring, "shared_prefix": shared_prefix, "ice_num": task.ice_num,
                "index_split": task.index_split, "test_split": task.test_split, "limit": limit,
                "max_tokens": max_tokens, "max_seq_len": seq_len, **row_counts(records), "task_file": task.source,
                "ignore_token_id": openicl_ignore_id(tokenizer),
                **retriever.settings(), **shard_info}
    return TaskResult(task=task.name, kind="icl", metrics=icl_metrics(records), n_examples=n,
                      predictions=pred_name, seconds=round(time.time() - start, 3), settings=settings)

