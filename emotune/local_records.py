"""Records of a user's local data file, one reader for the training data (emotune.train.records) and a task's
data (emotune.eval.task_data): a JSON list (`.json` starting with `[`), JSON lines (`.jsonl`, or a `.json` of
objects one a line) or parquet, each record a mapping, with where it stands in the file for the caller's checks.

Bad content is one EmotuneError naming the file and line (or record). The two stages word it each their own
way (`Wording`: their messages predate this module, and their tests and users read them); the reading is one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from emotune.atomic import decode_utf8
from emotune.errors import EmotuneError, one_line

JSON_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)


class Wording(NamedTuple):
    """How one stage names a place in a file and what is wrong there (str.format templates)."""

    line: str  # a line of the text: {path} {n}
    record: str  # an item of a JSON list: {path} {n}
    row: str  # a row of a parquet table: {path} {n}
    bad_json: str  # {at}: the place, {msg}: the JSON parser's message
    not_object: str  # {at}: an item of a JSON list that is not an object
    not_object_line: str  # {at}: a JSON line that is not an object
    bad_parquet: str  # {path} {problem}


def read_local_records(path: str | Path, wording: Wording) -> list[tuple[str, dict[str, Any]]]:
    """(where, record) for every record of a `.json`, `.jsonl` or `.parquet` file (`where` names the line,
    record or row in `wording`). The file must exist; its suffix is the caller's to check."""
    if Path(path).suffix.lower() in PARQUET_SUFFIXES:
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as err:  # noqa: BLE001 - pyarrow raises many types for a damaged file
            raise EmotuneError(wording.bad_parquet.format(path=path, problem=one_line(err))) from None
        return [(wording.row.format(path=path, n=n), row) for n, row in enumerate(rows, 1)]
    text = decode_utf8(path)
    if Path(path).suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            rows = list(json.loads(text))
        except json.JSONDecodeError as err:
            at = wording.line.format(path=path, n=err.lineno)
            raise EmotuneError(wording.bad_json.format(at=at, msg=err.msg)) from None
        out = [(wording.record.format(path=path, n=n), row) for n, row in enumerate(rows, 1)]
        for at, row in out:
            if not isinstance(row, dict):
                raise EmotuneError(wording.not_object.format(at=at))
        return out
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        at = wording.line.format(path=path, n=n)
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise EmotuneError(wording.bad_json.format(at=at, msg=err.msg)) from None
        if not isinstance(row, dict):
            raise EmotuneError(wording.not_object_line.format(at=at))
        out.append((at, row))
    return out


MISSING = object()


def field_of(row: dict, name: str):
    """A record's field, or MISSING. A dotted name reaches into nested objects (`data.instruction` of
    `{"data": {"instruction": ...}}`, as some hub sets nest their columns in one struct) unless the record
    has a field of exactly that name."""
    if name in row:
        return row[name]
    node = row
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node
