"""Reading a task file: `configs/eval/tasks/<name>.yaml` by name (shipped inside the package,
emotune/configs/eval/tasks) or a task file of your own by its path; suites are emotune.tasks.suites.

A task file says *what* to evaluate (dataset, splits, columns, templates); the evaluator (emotune.eval)
says *how*. Every task has a `kind`, an entry of emotune.tasks.registry:

    kind: icl          # OpenICL-style TopK + PPL classification (eval/icl/classification.py)
    kind: mmlu         # OpenCompass mmlu_ppl 5-shot (eval/icl/mmlu.py)
    kind: generation   # open-ended generation + MAUVE (eval/generation/task.py)
    kind: oracle       # the synthetic language's oracle metrics (eval/oracle_task.py, synthetic/oracle.py)
    kind: instruct     # instruction following: responses + a local pairwise judge (eval/instruct/)

This module only reads and checks task files (yaml, no torch), so the evaluator and the scheduler (which
hashes a suite's task definitions into its version) can both use it without depending on each other;
reading a task's data is emotune.eval.task_data.

Data comes from the hub (`dataset.path` [+ `name`, `revision`]; script-based datasets through their
`refs/convert/parquet` revision, since datasets>=4 no longer runs scripts) or from local JSONL/CSV/parquet
files with the same columns (`dataset.data_files: {split: file}`, or the `data_dir` option: a folder holding
`<split>.jsonl|csv|parquet`). A split may carry a slice as in `datasets`: `train[:30%]`, `train[10:200]`.

The grammar of ICL templates is emotune.tasks.icl; every kind's keys, emotune.tasks.schema.

Everything that can be wrong in a task file is checked here and reported as an EmotuneError naming the
file and key, before any model is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emotune.atomic import read_user_yaml
from emotune.errors import EmotuneError
from emotune.resources import resolve, shipped
from emotune.tasks.registry import kind_of, task_file_kinds
from emotune.tasks.schema import read_task_file
from emotune.tasks.shards import check_shardable, check_shards
from emotune.tasks.task import Task, check_name, need

CONFIG_DIR = shipped("eval")  # the shipped tasks/, suites/ and suites.yaml (importlib.resources)


def task_from_dict(cfg: dict[str, Any], source: str = "<memory>") -> Task:
    """A Task from a task file's mapping: the keys every kind shares checked here, its own keys by its
    registry entry's `read` (the others' by their schema, check_task_file, before any model loads)."""
    if not isinstance(cfg, dict):
        raise EmotuneError(f"{source}: a task file must be a YAML mapping")
    name = str(need(cfg, "name", source, (str, int)))
    check_name(name, source)
    kind = need(cfg, "kind", source, str)
    if kind not in task_file_kinds():
        raise EmotuneError(f"{source}: key 'kind' must be one of {', '.join(task_file_kinds())} (got {kind!r})")
    dataset = cfg.get("dataset") or {}
    if not isinstance(dataset, dict):
        raise EmotuneError(f"{source}: key 'dataset' must be a mapping (path/name/revision or data_files)")
    task = Task(name=name, kind=kind, source=source, dataset=dict(dataset), raw=dict(cfg),
                test_split=str(cfg.get("test_split", "test")), index_split=str(cfg.get("index_split", "train")),
                options=dict(cfg.get("options") or {}))
    if "shards" in cfg:
        task.shards = check_shards(cfg["shards"], source)
        check_shardable(kind, task.shards, source)
    read = kind_of(kind, source).read
    if read is not None:
        read(task, cfg, source)
    return task


def check_task_file(task: Task) -> None:
    """Every key of a task's file checked against its kind's schema (one line naming the file and key)."""
    read_task_file(kind_of(task.kind, task.source).schema, task.raw, task.source)


def load_task_file(path: str | Path) -> Task:
    path = Path(path)
    return task_from_dict(read_user_yaml(path, "task file"), str(path))


def load_task(name_or_path: str, config_dir: Path = CONFIG_DIR) -> Task:
    """A task by name (`configs/eval/tasks/<name>.yaml`) or by the path of a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return load_task_file(resolve(p, "task"))  # the user's file, else a shipped one of that path
    candidate = config_dir / "tasks" / f"{name_or_path}.yaml"
    if not candidate.exists():
        known = sorted(f.stem for f in (config_dir / "tasks").glob("*.yaml"))
        raise EmotuneError(f"unknown task {name_or_path!r} (no {candidate}; known: {', '.join(known)})")
    return load_task_file(candidate)
