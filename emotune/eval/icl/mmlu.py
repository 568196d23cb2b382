"""MMLU 5-shot in OpenCompass' `mmlu_ppl` prompt design (docs/evaluation.md, *MMLU*).

Per subject: demos = the first `shots` dev rows of that subject. The prompt itself is data, the task
file's `prompt:` (configs/eval/tasks/mmlu.yaml): there, each demo is
`{question}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\nAnswer: {gold}\n`, joined with '\n' plus a final '\n'
(OpenCompass' ice_separator / ice_eos_token, so a blank line follows every demo); candidate for letter X =
hint + demos + `{question}\nA. ...\nD. {D}\nAnswer: X`, scored with the same PPL rule as the ICL tasks.
The hint and demos are common to every candidate of a subject, so the scorer computes them once per
subject (its level-0 prefix). Reported: micro accuracy (all questions; OpenCompass' `mmlu-weighted`),
macro accuracy (mean over subjects; OpenCompass' headline `mmlu`) and the accuracy of every subject.
A prompt longer than the model's positions loses demos from the end as in OpenCompass (emotune.eval.icl.fit).
Tokens equal to the pad token (EOS where there is none) are left out of the score's sum and length, as
OpenCompass does.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path
from typing import Any

from emotune.atomic import write_jsonl
from emotune.errors import EmotuneError
from emotune.eval.icl.classification import prompt_record, tokenize_groups
from emotune.eval.icl.fit import fit_prompts, max_seq_len
from emotune.eval.icl.scorer import score_groups
from emotune.eval.summary import TaskResult
from emotune.eval.task_data import check_columns, load_split
from emotune.tasks.metrics import OPENCOMPASS_NAMES, mmlu_metrics, row_counts
from emotune.tasks.schema import MmluPrompt, MmluTaskFile, read_task_file
from emotune.tasks.shards import parse_shard, shard_range, shard_settings
from emotune.tasks.task import Task

LETTERS = "ABCD"
COLUMNS = ["subject", "question", "choices", "answer"]


def opencompass_ignore_id(tokenizer) -> int | None:
    """OpenCompass' PPL leaves the pad token out of the NLL sum and the length, and pads with EOS only when
    the tokenizer has no pad token. Unlike OpenICL (always EOS), a BOS that is EOS (OPT, which has <pad>)
    thus counts in T here."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def read_task(task: Task) -> MmluTaskFile:
    """The task file's keys, checked: one EmotuneError line naming the key."""
    return read_task_file(MmluTaskFile, task.raw, task.source)


@lru_cache(maxsize=1)
def shipped_prompt() -> MmluPrompt:
    """The prompt of the shipped mmlu.yaml: the one for task files that give none."""
    from emotune.tasks.files import load_task

    return MmluPrompt(**load_task("mmlu").raw["prompt"])


def _choices(row: dict, where: str) -> list[str]:
    choices = row["choices"]
    if isinstance(choices, str):  # CSV: a JSON list in one cell
        import json

        try:
            choices = json.loads(choices)
        except ValueError:
            raise EmotuneError(f"{where}: column 'choices' must be a list of 4 strings") from None
    if len(choices) != 4:
        raise EmotuneError(f"{where}: column 'choices' must hold 4 options (got {len(choices)})")
    return [str(c) for c in choices]


def answer_index(value: Any, where: str) -> int:
    if isinstance(value, str) and value.strip().upper() in LETTERS:
        return LETTERS.index(value.strip().upper())
    try:
        idx = int(value)
    except (TypeError, ValueError):
        idx = -1
    if not 0 <= idx < 4:
        raise EmotuneError(f"{where}: column 'answer' must be 0-3 or A-D (got {value!r})")
    return idx


def question(row: dict, where: str, prompt: MmluPrompt) -> str:
    a, b, c, d = _choices(row, where)
    return prompt.question.format(question=row["question"], A=a, B=b, C=c, D=d)


def demo(row: dict, where: str, prompt: MmluPrompt) -> str:
    gold = LETTERS[answer_index(row["answer"], where)]
    return question(row, where, prompt) + prompt.answer.format(answer=gold) + prompt.demo_end


def candidates(subject: str, dev_rows: list[dict], row: dict, where: str, prompt: MmluPrompt | None = None) -> list[str]:
    """The four candidate prompts of one test row (letters A-D), in the task file's prompt design."""
    prompt = prompt or shipped_prompt()
    demos = prompt.ice_separator.join(demo(r, f"dev row of {subject}", prompt) for r in dev_rows)
    prefix = prompt.hint.format(subject=subject.replace("_", " ")) + demos + prompt.ice_end
    q = question(row, where, prompt)
    return [prefix + q + prompt.answer.format(answer=x) for x in LETTERS]


def by_subject(rows: list[dict]) -> "OrderedDict[str, list[tuple[int, dict]]]":
    out: OrderedDict[str, list[tuple[int, dict]]] = OrderedDict()
    for i, r in enumerate(rows):
        out.setdefault(str(r["subject"]), []).append((i, r))
    return out


def evaluated_questions(task: Task, data_dir=None, limit: int | None = None) -> "OrderedDict[str, list[tuple[int, dict]]]":
    """The questions evaluated, per subject in order: the task's `subjects`, the first `limit` of each."""
    test_rows = load_split(task, task.test_split, data_dir, key="test_split")
    check_columns(task, test_rows, task.test_split, COLUMNS)
    tests = by_subject(test_rows)
    wanted = read_task(task).subjects
    if wanted != "all":
        unknown = [s for s in wanted if s not in tests]
        if unknown:
            raise EmotuneError(f"{task.source}: key 'subjects': no test rows for subject {unknown[0]!r}")
        tests = OrderedDict((s, tests[s]) for s in wanted)
    return OrderedDict((s, items[:limit] if limit is not None else items) for s, items in tests.items())


def count_questions(task: Task, data_dir=None, limit: int | None = None) -> int:
    """The questions evaluated, over all subjects: the rows `shard=K/N` splits."""
    return sum(len(items) for items in evaluated_questions(task, data_dir, limit).values())


def _fitted_prompts(subject: str, items: list, shots_rows: list, prompt, tokenizer, seq_len: int, scoring: str):
    """Each question's four candidate prompts with its demos, fitted into `seq_len` (fewer demos, then truncation)."""
    prompts = [candidates(subject, shots_rows, r, f"test row {i}", prompt) for i, r in items]
    groups = tokenize_groups(tokenizer, prompts)
    fitted = []
    for j, (i, r) in enumerate(items):
        def build(n, r=r, i=i):
            return candidates(subject, shots_rows[:n], r, f"test row {i}", prompt)
        fitted.append(fit_prompts(build, len(shots_rows), prompts[j], groups[j], tokenizer, seq_len,
                                  same_demos=scoring == "continuation"))
        prompts[j], groups[j] = fitted[j].prompts, fitted[j].ids
    return prompts, groups, fitted


def run_mmlu_task(task: Task, model, tokenizer, out_dir: str | os.PathLike, *, data_dir=None,
                  scoring: str | None = None, shared_prefix: bool = True, batch_size: int = 8,
                  limit: int | None = None, progress: bool = True, shard: str | None = None,
                  max_tokens: int | None = None, **_: Any) -> TaskResult:
    """`shard="K/N"`: only the K-th of N contiguous ranges of the questions in the order they are
    evaluated (subject by subject, after `limit`); a subject it touches is planned whole, so the scorer
    makes exactly the whole run's model calls for its questions (emotune.tasks.shards).

    max_seq_len (OpenCompass' model-side `max_seq_len`) = `max_tokens` where given, else the model's
    position limit (its config's max_position_embeddings, as OpenCompass' HF model reads it); never more
    than the positions the model has. Rows it touches record `demos_dropped` / `truncated_tokens`."""
    start = time.time()
    spec = read_task(task)
    scoring = scoring or task.options.get("scoring", "full")
    shots, prompt = spec.shots, spec.prompt or shipped_prompt()
    tests = evaluated_questions(task, data_dir, limit)
    dev_rows = load_split(task, task.index_split, data_dir, key="dev_split")
    check_columns(task, dev_rows, task.index_split, COLUMNS)
    devs = by_subject(dev_rows)
    n_rows = sum(len(items) for items in tests.values())
    selected, shard_info = range(n_rows), {}
    if shard is not None:
        k, n_shards = parse_shard(shard)
        selected = shard_range(n_rows, k, n_shards)
        shard_info = shard_settings(selected, k, n_shards, n_rows)
    seq_len = max_seq_len(model, max_tokens)
    records = []
    ignore = opencompass_ignore_id(tokenizer)
    offset = 0
    for subject, items in tests.items():
        first, offset = offset, offset + len(items)
        mine = range(max(selected.start - first, 0), min(selected.stop - first, len(items)))
        if not mine:
            continue  # another shard's subject
        shots_rows = [r for _, r in devs.get(subject, [])][:shots]
        if len(shots_rows) < shots:
            raise EmotuneError(f"{task.source}: subject {subject!r} has {len(shots_rows)} dev rows, {shots} needed "
                               f"(key 'shots')")
        prompts, groups, fitted = _fitted_prompts(subject, items, shots_rows, prompt, tokenizer, seq_len, scoring)
        scored = score_groups(model, groups, rule=scoring, shared_prefix=shared_prefix, batch_size=batch_size,
                              ignore_id=ignore, progress=progress, select=mine if shard is not None else None)
        for j in mine:
            (i, r), scores, pred, cands = items[j], scored.scores[j], scored.predictions[j], prompts[j]
            gold = answer_index(r["answer"], f"test row {i}")
            records.append({"id": i, "subject": subject, "input": r["question"],
                            "scores": dict(zip(LETTERS, scores)), "prediction": LETTERS[pred],
                            "gold": LETTERS[gold], "correct": pred == gold,
                            **fitted[j].record(len(shots_rows), list(LETTERS)),
                            **prompt_record(cands, list(LETTERS))})
    if not records:
        raise EmotuneError(f"{task.source}: no MMLU test rows to evaluate")
    pred_name = f"{task.name}.predictions.jsonl"
    write_jsonl(Path(out_dir) / pred_name, records)
    metrics = mmlu_metrics(records)  # with the harness's stderr of every proportion
    settings = {"scoring": scoring, "shared_prefix": shared_prefix, "shots": shots,
                "subjects": len({r["subject"] for r in records}), "prompt": "opencompass mmlu_ppl",
                "limit_per_subject": limit, "task_file": task.source, "ignore_token_id": ignore,
                "max_seq_len": seq_len, **row_counts(records), "opencompass_names": OPENCOMPASS_NAMES,
                **shard_info}
    return TaskResult(task=task.name, kind="mmlu", metrics=metrics, n_examples=len(records), predictions=pred_name,
                      seconds=round(time.time() - start, 3), settings=settings)
