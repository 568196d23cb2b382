"""Every file emotune writes, and the readers of those files: a reader (or a crash) sees the old
file or the new one, never half of one.

Files: written to a temporary file in the same folder, fsynced, then `os.replace`d over the target
(`atomic_open`, `write_text`, `write_json`, `write_yaml`, ...). Folders (a checkpoint export, a trained
tokenizer): built under a temporary name, then `publish_dir` renames them into place. Logs that grow
line by line (`train_log.jsonl`): `AppendLog`, one `write` per whole line on an O_APPEND descriptor,
a torn last line (the process was killed mid-write) cut off when the log is opened again.

Readers (`read_json`, `read_yaml`, `read_jsonl`) read the format the writer wrote and report a
missing or damaged file as one EmotuneError line naming it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import yaml

from emotune.errors import EmotuneError, yaml_error

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """`with atomic_open(p) as f: f.write(...)` replaces `p` only when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it 0600: give it the mode a plain open() would
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    return Path(path)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    with atomic_open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(path)


def write_yaml(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, yaml.safe_dump(obj, sort_keys=False))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Move the finished folder `tmp` to `final` (replacing an earlier, interrupted `final`).

    Readers must still trust only what carries a completion marker written after this (a crash
    between removing the old `final` and the rename leaves neither, never a mix of both)."""
    tmp, final = Path(tmp), Path(final)
    for f in tmp.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    return final


class AppendLog:
    """A JSONL log that grows one record at a time and survives being killed at any moment.

    Each record is one `os.write` of a whole line on an O_APPEND descriptor, so a record is either
    in the file or (killed mid-write) a torn last line; opening the log cuts such a line off.
    `keep(record)` drops earlier records when the log is reopened (a resumed run drops the records
    of the steps it is about to redo); that rewrite is atomic."""

    def __init__(self, path: str | os.PathLike, keep: Callable[[dict], bool] | None = None, fsync: bool = True):
        self.path = Path(path)
        self.fsync = fsync
        if self.path.is_file():
            data = self.path.read_bytes()
            whole = data[: data.rfind(b"\n") + 1]  # a torn last line (no newline) is cut off
            if keep is not None:
                rows = []
                for line in whole.decode("utf-8", errors="replace").splitlines(keepends=True):
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(rec, dict) and keep(rec):
                        rows.append(line)
                whole = "".join(rows).encode()
            if whole != data:
                write_bytes(self.path, whole)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, record: dict) -> None:
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        n = os.write(self.fd, data)
        if n != len(data):  # a short write (disk full): finish the line so the next record stays parseable
            os.write(self.fd, data[n:])
        if self.fsync:
            os.fsync(self.fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# ----------------------------------------------------------------------------------------------
# readers: the format each writer above writes; a missing or damaged file is one EmotuneError line

def decode_utf8(path: str | os.PathLike) -> str:
    """A user's data file as UTF-8 text; binary content (invalid UTF-8, NUL bytes) is one error naming the
    file and line."""
    path = Path(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise EmotuneError(f"{path}: line {line}: not UTF-8 text (byte {data[err.start]:#04x}; a binary file?)") from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise EmotuneError(f"{path}: line {line}: contains NUL bytes (a binary file?)")
    return text


def read_user_yaml(path: str | os.PathLike, what: str, loader: type | None = None) -> Any:
    """A user's YAML file (run config, task file, suite): UTF-8 text parsed safely (`loader`: a SafeLoader
    subclass); unreadable, binary or invalid YAML is one line naming the file (and line)."""
    path = Path(path)
    try:
        text = decode_utf8(path)
    except OSError as err:
        raise EmotuneError(f"{path}: cannot read {what} ({err.strerror})") from None
    try:
        return yaml.safe_load(text) if loader is None else yaml.load(text, Loader=loader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as err:
        raise yaml_error(path, err) from None


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise EmotuneError(f"{what} {path} not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise EmotuneError(f"{what} {path} is unreadable: {err}") from None


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    path = Path(path)
    text = _read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise EmotuneError(f"{what} {path}: line {err.lineno}: not valid JSON ({err.msg})") from None


def read_yaml(path: str | os.PathLike, what: str = "file") -> Any:
    path = Path(path)
    text = _read_text(path, what)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f": line {mark.line + 1}" if mark else ""
        raise EmotuneError(f"{what} {path}{where}: not valid YAML ({getattr(err, 'problem', None) or err})") from None


def read_jsonl(path: str | os.PathLike, on_bad_line: Callable[[int, str], None] | None = None) -> list[dict]:
    """The records of a JSONL file this project wrote. A line that is not a JSON object (the torn last
    line of a log being written) goes to `on_bad_line(line_number, text)`, or raises without one."""
    path = Path(path)
    rows = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        raise EmotuneError(f"{path} not found") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if not isinstance(rec, dict):
            if on_bad_line is None:
                raise EmotuneError(f"{path}: line {i}: not a JSON object")
            on_bad_line(i, line)
            continue
        rows.append(rec)
    return rows
