"""Reading training records: local files (.txt lines, .jsonl / .json, .parquet) or a hub dataset, every record
checked for the fields its format needs (with the file and line at fault), then split into train / validation.

Tokenising them is data.py's business; a conversation record's checks are chat.py's.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emotune.atomic import decode_utf8
from emotune.errors import EmotuneError, one_line
from emotune.local_records import JSON_SUFFIXES, MISSING, PARQUET_SUFFIXES, Wording, field_of, read_local_records
from emotune.train.chat import conversation_of

log = logging.getLogger("emotune.data")

TEXT_SUFFIXES = (".txt", ".text", ".raw")

# The training data's words for bad records (emotune.local_records reads them)
WORDING = Wording(line="{path}: line {n}", record="{path}: record {n}", row="{path}: row {n}",
                  bad_json="{at}: invalid JSON: {msg}", not_object="{at}: not a JSON object",
                  not_object_line="{at}: not a JSON object", bad_parquet="{path}: not a readable parquet file: {problem}")


def _read_local(path: str, d=None) -> list[dict]:
    """Records of one local file, each checked (`d`: the DataConfig whose columns every record must have)."""
    p = Path(path)
    if not p.is_file():
        raise EmotuneError(f"data file {path} not found")
    suffix = p.suffix.lower()
    column = d.text_column if d is not None else "text"
    if suffix in TEXT_SUFFIXES:
        if d is not None and d.format != "text":
            what = "instruction" if d.format == "instruction" else "conversation (data.format: chat)"
            raise EmotuneError(f"{path}: {what} data must be .jsonl, .json or .parquet records, not plain text")
        return [{column: line} for line in decode_utf8(p).splitlines()]
    if suffix not in JSON_SUFFIXES + PARQUET_SUFFIXES:
        raise EmotuneError(f"data file {path}: unsupported type {suffix!r} (use .txt, .jsonl, .json or .parquet)")
    records = read_local_records(path, WORDING)
    if d is not None:
        for at, row in records:
            check_record(row, d, at)
    return [row for _, row in records]


def check_local_files(cfg) -> None:
    """Read and check every record of the local data files (UTF-8, JSON, the fields the format needs),
    one file at a time, keeping nothing: bad data fails before any process group or model exists."""
    d = cfg.data
    if not d.train_files:
        return
    n_train = 0
    for f in d.train_files + (d.validation_files or []):
        p = Path(f)
        if p.suffix.lower() in TEXT_SUFFIXES and d.format == "text":
            n = len(decode_utf8(p).splitlines()) if p.is_file() else 0  # plain text: every line is a record
        else:
            n = len(_read_local(f, d))
        n_train += n if f in d.train_files else 0
    if n_train == 0:
        raise EmotuneError(f"data.train_files ({', '.join(d.train_files)}): the training data is empty (no records)")


def check_record(row: dict, d, where: str) -> None:
    """Every record (not only the first) has the fields its format needs, as strings: a record without
    its text or response would otherwise train as an empty document, silently."""
    if d.format == "chat":
        conversation_of(row, d, where)  # roles, contents, an assistant turn
        return
    if d.format == "text":
        needed, optional = (d.text_column,), ()
    else:
        needed, optional = (d.instruction_column, d.output_column), (d.input_column,)
    for col in needed:
        value = field_of(row, col)
        if value is MISSING:
            key = "data.text_column" if d.format == "text" else "data.instruction_column / data.output_column"
            raise EmotuneError(f"{where}: no {col!r} field (fields: {sorted(row)}); check the file or {key}")
        if not isinstance(value, str):
            raise EmotuneError(f"{where}: field {col!r} must be a string, got {type(value).__name__}")
    for col in optional:
        value = field_of(row, col)
        if value is not MISSING and value is not None and not isinstance(value, str):
            raise EmotuneError(f"{where}: field {col!r} must be a string, got {type(value).__name__}")


def _read_hub(name: str, config: str | None, split: str, d=None) -> list[dict]:
    import datasets

    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as err:
        raise EmotuneError(f"dataset {name!r} (config {config!r}, split {split!r}) could not be loaded: {one_line(err)}") from None
    rows = ds.to_list()
    if d is not None:
        for n, row in enumerate(rows, 1):
            check_record(row, d, f"dataset {name!r} split {split!r}: row {n}")
    return rows


def _fingerprint_files(files: list[str]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


@dataclass
class RawSplits:
    train: list[dict]
    validation: list[dict]
    fingerprint: str  # identifies the records (file contents or hub id)
    source: str = "the training data"  # named in messages: the files or the hub dataset


def read_records(cfg) -> RawSplits:
    """Train and validation records from local files or a hub dataset (`cfg` is a DataConfig + seed)."""
    d = cfg.data
    if d.train_files:
        for f in d.train_files + (d.validation_files or []):
            if not Path(f).is_file():
                raise EmotuneError(f"data.train_files / validation_files: data file {f} not found")
        train = [r for f in d.train_files for r in _read_local(f, d)]
        val = [r for f in (d.validation_files or []) for r in _read_local(f, d)]
        fp = _fingerprint_files(d.train_files + (d.validation_files or []))
        source = f"data.train_files ({', '.join(d.train_files)})"
    else:
        train = _read_hub(d.dataset_name, d.dataset_config_name, d.train_split, d)
        source = f"data.dataset_name ({d.dataset_name!r}, split {d.train_split!r})"
        val = []
        if d.validation_split and d.validation_split_percentage == 0:
            try:
                val = _read_hub(d.dataset_name, d.dataset_config_name, d.validation_split)
            except EmotuneError:
                log.warning("dataset %s has no split %r: no validation", d.dataset_name, d.validation_split)
            for n, row in enumerate(val, 1):  # outside the try: a bad record is an error, not "no split"
                check_record(row, d, f"dataset {d.dataset_name!r} split {d.validation_split!r}: row {n}")
        fp = hashlib.sha256(f"{d.dataset_name}|{d.dataset_config_name}|{d.train_split}|{d.validation_split}".encode()).hexdigest()
    if not val and d.validation_split_percentage > 0:
        perm = np.random.default_rng(cfg.seed).permutation(len(train))
        n_val = max(1, int(len(train) * d.validation_split_percentage / 100))
        val = [train[i] for i in sorted(perm[:n_val])]
        train = [train[i] for i in sorted(perm[n_val:])]
    if not train:
        raise EmotuneError(f"{source}: the training data is empty (no records)")
    return RawSplits(train, val, fp, source)


def texts_of(records: list[dict], column: str, where: str = "data") -> list[str]:
    values = [field_of(r, column) for r in records]
    for n, (r, v) in enumerate(zip(records, values), 1):  # every record: a missing text must not train as an empty document
        if v is MISSING:
            raise EmotuneError(f"{where}: record {n} has no column {column!r} (columns: {sorted(r)}); set data.text_column")
    return [str(v if v is not None else "") for v in values]

