"""AlpacaEval's outputs format: a JSON list of `{instruction, output, generator, dataset}` records.

The same file the official `alpaca_eval` reads (`alpaca_eval --model_outputs FILE`), so a user can judge
our responses with GPT-4 themselves. Reading one is strict: every record is checked and the first bad
one is named (record number and key), since a pairwise comparison of misaligned files would be noise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from emotune.atomic import write_text
from emotune.errors import EmotuneError

FIELDS = ("instruction", "output", "generator", "dataset")


def check_record(record: Any, n: int, where: str) -> dict[str, str]:
    """One record (1-based `n`): a mapping whose four fields are strings (instruction non-blank)."""
    if not isinstance(record, dict):
        raise EmotuneError(f"{where}: record {n} is a {type(record).__name__}, not an object with "
                           f"{', '.join(FIELDS)} (AlpacaEval's outputs format)")
    for key in FIELDS:
        if key not in record:
            raise EmotuneError(f"{where}: record {n} has no key {key!r} (AlpacaEval's outputs format: "
                               f"{', '.join(FIELDS)})")
        if not isinstance(record[key], str):
            raise EmotuneError(f"{where}: record {n} key {key!r} is a {type(record[key]).__name__}, not a string")
    if not record["instruction"].strip():
        raise EmotuneError(f"{where}: record {n} key 'instruction' is empty")
    return {k: record[k] for k in FIELDS}


def check_outputs(records: Any, where: str) -> list[dict[str, str]]:
    """A whole outputs list: a non-empty JSON list of valid records, no instruction twice."""
    if not isinstance(records, list):
        raise EmotuneError(f"{where}: not a JSON list of records (AlpacaEval's outputs format: "
                           f"[{{{', '.join(FIELDS)}}}, ...])")
    if not records:
        raise EmotuneError(f"{where}: holds no records")
    out = [check_record(r, n, where) for n, r in enumerate(records, 1)]
    seen: dict[str, int] = {}
    for n, r in enumerate(out, 1):
        if r["instruction"] in seen:
            raise EmotuneError(f"{where}: record {n} repeats the instruction of record {seen[r['instruction']]}")
        seen[r["instruction"]] = n
    return out


def read_outputs(path: str | Path) -> list[dict[str, str]]:
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise EmotuneError(f"{path}: outputs file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise EmotuneError(f"{path}: unreadable outputs file ({err})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise EmotuneError(f"{path}: line {err.lineno}: not valid JSON ({err.msg}); AlpacaEval's outputs format "
                           "is one JSON list") from None
    return check_outputs(data, str(path))


def write_outputs(path: str | Path, records: Sequence[dict[str, str]]) -> Path:
    """Check every record, then write the list atomically (indented, as alpaca_eval's own files)."""
    checked = check_outputs(list(records), str(path))
    return write_text(path, json.dumps(checked, indent=2, ensure_ascii=False) + "\n")


def align(a: list[dict[str, str]], b: list[dict[str, str]], where_a: str, where_b: str) -> list[tuple[dict, dict]]:
    """The two sides' records paired by instruction (in A's order); different instruction sets are an
    error naming the first instruction that only one side has."""
    by_b = {r["instruction"]: r for r in b}
    by_a = {r["instruction"]: r for r in a}
    only_a = [r["instruction"] for r in a if r["instruction"] not in by_b]
    only_b = [r["instruction"] for r in b if r["instruction"] not in by_a]
    if only_a or only_b:
        side, inst = (where_a, only_a[0]) if only_a else (where_b, only_b[0])
        raise EmotuneError(f"the two sides hold different instruction sets: {where_a} ({len(a)} records) vs "
                           f"{where_b} ({len(b)} records), {len(only_a) + len(only_b)} not in both; e.g. only "
                           f"{side} has {inst[:60]!r}")
    return [(r, by_b[r["instruction"]]) for r in a]
