"""The evaluator's side of the task-kind registry (emotune.tasks.registry): the functions its entries
name, imported only when a task of that kind runs (the registry itself stays torch-free)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

from emotune.errors import EmotuneError
from emotune.tasks.registry import kind_of
from emotune.tasks.task import Task


def load_entry(entry: str, where: str) -> Callable:
    """The function a registry entry names ("module:function"); one line where it cannot be imported."""
    module, _, func = entry.partition(":")
    try:
        return getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as err:
        raise EmotuneError(f"{where} needs {module}.{func}, which is not available in this installation "
                           f"({err})") from None


def run_task(task: Task, model, tokenizer, out_dir: Path, opts: dict[str, Any], retriever_factory):
    """Run one task by its kind's evaluator (every `emotune eval` option passed; each takes its own)."""
    entry = kind_of(task.kind, task.source)
    run = load_entry(entry.evaluator, f"{task.source}: kind {task.kind!r}")
    extra = {"retriever": retriever_factory()} if entry.retriever else {}
    return run(task, model, tokenizer, out_dir, **extra, **opts)


def count_rows(task: Task, data_dir, limit: int | None) -> int:
    """The rows `shard=K/N` splits (after `limit`); EmotuneError for a kind that does not shard."""
    entry = kind_of(task.kind, task.source)
    if entry.rows is None:
        raise EmotuneError(f"{task.source}: a kind: {task.kind} task cannot be sharded")
    return load_entry(entry.rows, f"{task.source}: kind {task.kind!r}")(task, data_dir, limit)


def check_data(task: Task, data_dir) -> None:
    """Read and check a task's data before any model loads, where its kind says how."""
    entry = kind_of(task.kind, task.source)
    if entry.check_data is not None:
        load_entry(entry.check_data, f"{task.source}: kind {task.kind!r}")(task, data_dir)
