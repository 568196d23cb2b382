"""The `pairwise` table of a result store: one row per judged (run A, run B, step, task, judge, format,
version), leased like the result rows (emotune.scheduling.store). Used by emotune.scheduling.pairwise."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emotune.errors import EmotuneError, one_line
from emotune.scheduling.store import Store, fail_row, immediate_tx, lease_rows

DEFAULT_JUDGE_COMMAND = ("{python} -m emotune.cli judge {a} {b} --judge {judge} --judge-format {format} "
                         "--out {out} progress=false")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pairwise (
    id            INTEGER PRIMARY KEY,
    run_a         TEXT NOT NULL,
    run_b         TEXT NOT NULL,
    step          INTEGER NOT NULL,
    task          TEXT NOT NULL,
    judge         TEXT NOT NULL,
    format        TEXT NOT NULL,
    version       TEXT NOT NULL,    -- suite version + judge settings
    name          TEXT NOT NULL,    -- the pair's label (report, output folder)
    outputs_a     TEXT NOT NULL,    -- the two AlpacaEval outputs files
    outputs_b     TEXT NOT NULL,
    status        TEXT NOT NULL DEFAULT 'pending',
    attempts      INTEGER NOT NULL DEFAULT 0,
    lease_token   TEXT,
    lease_owner   TEXT,
    lease_expires REAL,
    result        TEXT,             -- JSON: counts, win rate + interval, lengths
    output_dir    TEXT,
    host          TEXT,
    created_at    REAL NOT NULL,
    started_at    REAL,
    finished_at   REAL,
    error         TEXT,
    UNIQUE (run_a, run_b, step, task, judge, format, version)
);
"""



@dataclass(frozen=True)
class Pair:
    name: str
    run_a: str  # absolute run directories
    run_b: str
    task: str
    judge: str
    format: str
    suite_version: str
    judge_args: tuple[str, ...] = ()
    command: str = DEFAULT_JUDGE_COMMAND
    devices: str | None = None  # where the judge runs, not what it finds: not part of the version

    @property
    def version(self) -> str:
        """What the verdicts depend on beyond the row's other key columns: the suite (its outputs), the format,
        the judge's settings and the command that runs it."""
        what = {"suite": self.suite_version, "format": self.format, "judge_args": list(self.judge_args),
                "command": self.command}
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def key(self) -> tuple[str, str, str, str, str, str]:
        """The columns that identify its rows (with the step): one pair per key."""
        return (self.run_a, self.run_b, self.task, self.judge, self.format, self.version)


@dataclass
class PairRow:
    id: int
    run_a: str
    run_b: str
    step: int
    task: str
    judge: str
    format: str
    version: str
    name: str
    outputs_a: str
    outputs_b: str
    status: str
    attempts: int
    lease_token: str | None
    lease_owner: str | None
    lease_expires: float | None
    result: dict[str, Any] | None
    output_dir: str | None
    host: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None

    @property
    def key(self) -> tuple[str, str, str, str, str, str]:
        return (self.run_a, self.run_b, self.task, self.judge, self.format, self.version)


class PairStore:
    """The `pairwise` table of one result store file (its own SQLite connection, WAL like the store)."""

    def __init__(self, path: str | os.PathLike, timeout: float = 60.0, create: bool = True):
        self.path = Path(path)
        Store(self.path, timeout, create).close()  # the store's own checks: a file that is not a store is refused
        self.db = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA busy_timeout=%d" % int(timeout * 1000))
        with self.tx() as db:
            db.execute(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def tx(self):
        return immediate_tx(self.db)  # the store's own transaction: check-then-set is atomic

    def _row(self, r: sqlite3.Row) -> PairRow:
        d = dict(r)
        d["result"] = json.loads(d["result"]) if d["result"] else None
        return PairRow(**d)

    def rows(self, status: str | None = None) -> list[PairRow]:
        q, args = "SELECT * FROM pairwise", []
        if status:
            q, args = q + " WHERE status=?", [status]
        try:
            return [self._row(r) for r in self.db.execute(q + " ORDER BY name, step, id", args)]
        except (sqlite3.DatabaseError, ValueError, TypeError) as err:
            raise EmotuneError(f"{self.path}: pairwise table is damaged ({one_line(err)})") from None

    def get(self, row_id: int) -> PairRow | None:
        r = self.db.execute("SELECT * FROM pairwise WHERE id=?", (row_id,)).fetchone()
        return self._row(r) if r else None

    def enqueue(self, pair: Pair, step: int, outputs_a: str, outputs_b: str) -> int:
        with self.tx() as db:
            cur = db.execute("INSERT OR IGNORE INTO pairwise (run_a, run_b, step, task, judge, format, version, name,"
                             " outputs_a, outputs_b, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                             (pair.run_a, pair.run_b, step, pair.task, pair.judge, pair.format, pair.version,
                              pair.name, outputs_a, outputs_b, time.time()))
            return cur.rowcount

    def claim(self, owner: str, ttl: float, versions: list[str], limit: int = 1, max_attempts: int = 3,
              keys: list[tuple] | None = None) -> list[tuple[PairRow, str]]:
        """Lease runnable rows of these versions (and, given `keys`, only rows of those pairs: another
        pipeline's pair in the same store is not ours to run): pending, or running under an expired lease."""
        now, out = time.time(), []
        wanted = None if keys is None else {tuple(k) for k in keys}
        with self.tx() as db:
            marks = ",".join("?" * len(versions))
            found = db.execute(f"SELECT * FROM pairwise WHERE version IN ({marks}) AND (status='pending' OR "
                               "(status='running' AND lease_expires < ?)) ORDER BY step, id", [*versions, now]).fetchall()
            if wanted is not None:
                found = [r for r in found if self._row(r).key in wanted]
            for row_id, token in lease_rows(db, "pairwise", found, owner, ttl, limit, max_attempts, now):
                out.append((self.get(row_id), token))
        return out

    def _update(self, sql: str, args: tuple, row_id: int, token: str) -> bool:
        with self.tx() as db:
            return db.execute(sql + " WHERE id=? AND lease_token=? AND status='running'",
                              (*args, row_id, token)).rowcount == 1

    def start(self, row_id: int, token: str, ttl: float, owner: str) -> bool:
        return self._update("UPDATE pairwise SET started_at=?, host=?, lease_owner=?, lease_expires=?",
                            (time.time(), socket.gethostname(), owner, time.time() + ttl), row_id, token)

    def renew(self, row_id: int, token: str, ttl: float) -> bool:
        return self._update("UPDATE pairwise SET lease_expires=?", (time.time() + ttl,), row_id, token)

    def finish(self, row_id: int, token: str, result: dict[str, Any], output_dir: str) -> bool:
        return self._update("UPDATE pairwise SET status='finished', result=?, output_dir=?, finished_at=?,"
                            " lease_token=NULL, lease_expires=NULL, error=NULL",
                            (json.dumps(result, sort_keys=True), output_dir, time.time()), row_id, token)

    def fail(self, row_id: int, token: str, error: str, max_attempts: int, retry: bool = True) -> bool:
        with self.tx() as db:
            return fail_row(db, "pairwise", row_id, token, error, max_attempts, retry)
