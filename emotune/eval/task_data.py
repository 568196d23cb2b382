"""Reading a task's data: hub datasets or local JSONL / JSON / CSV / parquet files, `datasets`-style split
slices (`train[:30%]`), and the column / label checks run before any model is loaded.

The task file grammar itself (what a task says) is emotune.tasks.files.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from emotune.errors import EmotuneError, one_line
from emotune.local_records import Wording, read_local_records
from emotune.tasks.files import check_task_file
from emotune.tasks.task import Task

LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


_SLICE = re.compile(r"^(?P<split>[\w.-]+)(\[(?P<a>-?\d*)(?P<ap>%?):(?P<b>-?\d*)(?P<bp>%?)\])?$")


def parse_split(spec: str, source: str, key: str) -> tuple[str, tuple | None]:
    m = _SLICE.match(spec.strip())
    if not m:
        raise EmotuneError(f"{source}: key {key!r}: cannot parse split {spec!r} (use e.g. 'train' or 'train[:30%]')")
    if m.group(2) is None:
        return m.group("split"), None
    return m.group("split"), (m.group("a"), m.group("ap"), m.group("b"), m.group("bp"))


def apply_slice(rows: list[dict], sl: tuple | None) -> list[dict]:
    """`datasets`' slicing semantics: percent boundaries round to the closest row."""
    if sl is None:
        return rows
    n = len(rows)

    def bound(value: str, pct: str, default: int) -> int:
        if value == "":
            return default
        v = int(value)
        return int(round(v * n / 100.0)) if pct else v

    a, ap, b, bp = sl
    return rows[bound(a, ap, 0):bound(b, bp, n)]


def _find_local(data_dir: Path, split: str) -> Path | None:
    for suffix in LOCAL_SUFFIXES:
        p = data_dir / f"{split}{suffix}"
        if p.exists():
            return p
    return None


# A task's data's words for bad records (emotune.local_records reads them)
WORDING = Wording(line="{path}:{n}", record="{path}: record {n}", row="{path}: row {n}",
                  bad_json="{at}: not valid JSON ({msg})", not_object="{at} is not a JSON object",
                  not_object_line="{at}: each line must be a JSON object", bad_parquet="{path}: cannot read parquet ({problem})")


def read_local(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a local JSONL (or JSON list), CSV or parquet file."""
    path = Path(path)
    if not path.exists():
        raise EmotuneError(f"{path}: data file not found")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".parquet"):
        return [row for _, row in read_local_records(path, WORDING)]
    if suffix == ".csv":
        import pandas as pd

        try:
            return pd.read_csv(path, keep_default_na=False).to_dict("records")
        except Exception as err:  # pandas raises many types for malformed files
            raise EmotuneError(f"{path}: cannot read CSV ({one_line(err)})") from None
    raise EmotuneError(f"{path}: unsupported data file type (use {', '.join(LOCAL_SUFFIXES)})")


def _load_hub(task: Task, split: str) -> list[dict[str, Any]]:
    import datasets

    ds = task.dataset
    if "path" not in ds:
        raise EmotuneError(f"{task.source}: key 'dataset' needs 'path' (a hub id) or 'data_files' (local files)")
    try:
        data = datasets.load_dataset(ds["path"], ds.get("name"), split=split, revision=ds.get("revision"))
    except Exception as err:  # offline, unknown id, missing split ...: one clear line, no traceback
        raise EmotuneError(f"{task.source}: cannot load dataset {ds['path']!r} (config {ds.get('name')!r}, "
                           f"split {split!r}, revision {ds.get('revision')!r}): {type(err).__name__}: {one_line(err)}. "
                           "Offline, give local files with dataset.data_files or data_dir=DIR") from None
    return data.to_list()


def load_split(task: Task, spec: str, data_dir: str | Path | None = None, key: str = "test_split") -> list[dict]:
    """The rows of one split of a task (sliced if the spec carries a slice); local files win over the hub."""
    split, sl = parse_split(spec, task.source, key)
    files = task.dataset.get("data_files") or {}
    if not isinstance(files, dict):
        raise EmotuneError(f"{task.source}: key 'dataset.data_files' must map split names to files")
    local = None
    if data_dir is not None:
        d = Path(data_dir)
        local = _find_local(d / task.name, split) or _find_local(d, split)
        if local is None:
            raise EmotuneError(f"data_dir {d}: no {split}.jsonl/.csv/.parquet for task {task.name!r} "
                               f"(looked in {d / task.name} and {d})")
    elif split in files:
        local = Path(files[split])
        if not local.is_absolute() and task.source not in ("<memory>",):
            local = Path(task.source).parent / local if not local.exists() else local
    rows = read_local(local) if local is not None else _load_hub(task, split)
    return apply_slice(rows, sl)


def check_columns(task: Task, rows: list[dict], split: str, columns: list[str]) -> None:
    if not rows:
        raise EmotuneError(f"{task.source}: split {split!r} of task {task.name!r} has no rows")
    for n, row in enumerate(rows, 1):  # every row: a later row without a column must not crash mid-run
        missing = [c for c in columns if c not in row or row[c] is None]
        if missing:
            raise EmotuneError(f"{task.source}: split {split!r} row {n} of {len(rows)} has no column {missing[0]!r} "
                               f"(key 'input_columns'/'label_column'; columns present: {sorted(k for k in row if row[k] is not None)})")


def check_task_data(task: Task, data_dir: str | Path | None = None) -> None:
    """Check a task's file against its kind's schema (emotune.tasks.schema) and, where its kind says how
    (an ICL task: check_icl_data), its data, before any model is loaded, so bad data is one line in a second
    rather than after loading a 13B model. Other kinds' data is read by their own runner."""
    from emotune.eval.kinds import check_data

    check_task_file(task)
    check_data(task, data_dir)


def check_icl_data(task: Task, data_dir: str | Path | None = None) -> None:
    """Read an ICL task's splits and check every row (columns, labels)."""
    needed = [*task.input_columns, task.label_column]
    for key, spec in (("index_split", task.index_split), ("test_split", task.test_split)):
        rows = load_split(task, spec, data_dir, key=key)
        check_columns(task, rows, spec, needed)
        for i, row in enumerate(rows):
            task.label_key(row[task.label_column], f"split {spec!r} row {i + 1}")


def count_test_rows(task: Task, data_dir: str | Path | None = None, limit: int | None = None) -> int:
    """The test rows a task evaluates (after `limit`): what `shard=K/N` splits."""
    return len(load_split(task, task.test_split, data_dir)[:limit])
