"""The result store: one SQLite database (WAL) holding every evaluation job and its result.

One row per (run, checkpoint step, checkpoint fingerprint, suite version, task, shard). A task split into
N shards (emotune.tasks.shards) has N shard rows (shard 1..N, each one job) beside its task row (shard 0), which
is never claimed as a job: when its last shard finishes, a scheduler claims it with `claim_merges` (the
same lease protocol, so exactly one merges), merges the shards' records and finishes it. Readers that
want results (`rows()` by default: `emotune results`, the report) see only task rows. A row's status:

    pending  -> running (leased) -> finished
                         |-> pending again when the lease expires or the job fails (attempts < max)
                         |-> failed  (attempts used up)   |-> blocked (its SLURM parent failed)

Leases: a scheduler claims a row in one `BEGIN IMMEDIATE` transaction, setting a fresh random
`lease_token` and an expiry time. The job holding the token extends the expiry while it runs
(heartbeat) and is the only one that can finish the row; a token that is no longer current (the
lease expired and someone else took the row) makes the old job stop. So two schedulers on one store
never run the same job at once, a crashed job is retried after its lease expires, and a finished row
is never touched again. Every write is one short transaction; readers never block writers (WAL).
The file itself (its schema, checks, migration) is emotune.scheduling.store_file.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emotune.errors import EmotuneError, one_line
from emotune.scheduling.leases import fail_row, immediate_tx, lease_rows
from emotune.scheduling.store_file import open_store_db

DEFAULT_NAME = "results.sqlite"
TERMINAL = ("finished", "failed", "blocked")


def default_store_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "eval" / DEFAULT_NAME


@dataclass
class Row:
    id: int
    run: str
    step: int
    fingerprint: str
    suite: str
    suite_version: str
    task: str
    checkpoint: str
    tokens_seen: int | None
    objective: str | None
    status: str
    attempts: int
    lease_token: str | None
    lease_owner: str | None
    lease_expires: float | None
    runner: str | None
    external_id: str | None
    depends_on: str | None
    metrics: dict[str, float] | None
    n_examples: int | None
    predictions: str | None
    output_dir: str | None
    eval_seconds: float | None
    wall_seconds: float | None
    host: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    shard: int = 0
    shards: int = 1

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.pop("lease_token")  # a secret of the job holding it
        return d


def _where(query: str, args: list[Any], **equal: Any) -> tuple[str, list[Any]]:
    """`query` narrowed by `column=value` for every given (not None) value; column names are ours, values bound."""
    for column, value in equal.items():
        if value is not None:
            query += f" AND {column}=?"
            args = [*args, value]
    return query, args


def _row(r: sqlite3.Row) -> Row:
    d = dict(r)
    d["metrics"] = json.loads(d["metrics"]) if d["metrics"] else None
    return Row(**d)


class Store:
    """A handle on one result database. Cheap to open; open one per process (or thread)."""

    def __init__(self, path: str | os.PathLike, timeout: float = 60.0, create: bool = True):
        self.path = Path(path)
        self.db = open_store_db(self.path, timeout, create)

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def tx(self):
        """One write transaction (immediate_tx)."""
        return immediate_tx(self.db)

    # ------------------------------------------------------------------ enqueue and read
    def enqueue(self, run: str, step: int, fingerprint: str, suite: str, suite_version: str, tasks: list[str],
                checkpoint: str, tokens_seen: int | None = None, objective: str | None = None,
                shards: dict[str, int] | None = None) -> int:
        """Add a pending row per task unless the key exists, and for a new task row split into N shards
        (`shards[task]`) its N shard rows; returns how many jobs were new. A task already queued keeps
        the shards it was queued with (changing `shards` changes no result, so it re-runs nothing)."""
        now = time.time()
        cols = ("INSERT OR IGNORE INTO results (run, step, fingerprint, suite, suite_version, task, checkpoint,"
                " tokens_seen, objective, created_at, shard, shards) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)")
        with self.tx() as db:
            n = 0
            for task in tasks:
                count = (shards or {}).get(task, 1)
                key = (run, step, fingerprint, suite, suite_version, task, checkpoint, tokens_seen, objective, now)
                if db.execute(cols, (*key, 0, count)).rowcount == 0:
                    continue
                for k in range(1, count + 1) if count > 1 else ():
                    db.execute(cols, (*key, k, count))
                n += count
        return n

    def record(self, run: str, step: int, fingerprint: str, suite: str, suite_version: str, task: str,
               checkpoint: str, tokens_seen: int | None, objective: str | None, metrics: dict[str, float],
               n_examples: int | None, predictions: str | None, output_dir: str | None,
               eval_seconds: float | None) -> None:
        """A result made outside the scheduler (`emotune eval` by hand; emotune.scheduling.record): a finished
        row, created or, for the same key (the same settings evaluated again), updated. Never a job."""
        now = time.time()
        with self.tx() as db:
            db.execute(
                "INSERT INTO results (run, step, fingerprint, suite, suite_version, task, checkpoint, tokens_seen,"
                " objective, status, attempts, runner, metrics, n_examples, predictions, output_dir, eval_seconds,"
                " host, created_at, started_at, finished_at) VALUES (?,?,?,?,?,?,?,?,?,'finished',1,'eval',?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (run, step, fingerprint, suite_version, task, shard) DO UPDATE SET status='finished',"
                " metrics=excluded.metrics, n_examples=excluded.n_examples, predictions=excluded.predictions,"
                " output_dir=excluded.output_dir, eval_seconds=excluded.eval_seconds, host=excluded.host,"
                " created_at=excluded.created_at, finished_at=excluded.finished_at, error=NULL",
                (run, step, fingerprint, suite, suite_version, task, checkpoint, tokens_seen, objective,
                 json.dumps(metrics, sort_keys=True), n_examples, predictions, output_dir, eval_seconds,
                 socket.gethostname(), now, now - (eval_seconds or 0.0), now))

    def rows(self, run: str | None = None, status: str | tuple[str, ...] | None = None,
             suite: str | None = None, shards: bool = False) -> list[Row]:
        """The task rows (what results and reports read); `shards=True`: the shard rows (jobs) too."""
        q, args = _where("SELECT * FROM results WHERE 1=1", [], run=run, suite=suite)
        if not shards:
            q += " AND shard=0"
        if status is not None:
            status = (status,) if isinstance(status, str) else tuple(status)
            q += f" AND status IN ({','.join('?' * len(status))})"
            args += list(status)
        q += " ORDER BY run, step, task, shard, id"
        try:
            return [_row(r) for r in self.db.execute(q, args)]
        except (sqlite3.DatabaseError, ValueError, TypeError) as err:  # a damaged page or a hand-edited row
            raise EmotuneError(f"{self.path}: result store is damaged ({one_line(err)}); restore it from a copy") from None

    def get(self, row_id: int) -> Row | None:
        r = self.db.execute("SELECT * FROM results WHERE id=?", (row_id,)).fetchone()
        return _row(r) if r else None

    def runs(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT run FROM results ORDER BY run")]

    # ------------------------------------------------------------------ leases
    def claim(self, owner: str, ttl: float, run: str | None = None, suite_version: str | None = None,
              limit: int = 1, max_attempts: int = 3) -> list[tuple[Row, str]]:
        """Lease up to `limit` runnable rows: pending ones, or running ones whose lease expired.

        Returns (row, token) pairs. An expired row that already used `max_attempts` becomes failed.
        """
        now = time.time()
        out = []
        with self.tx() as db:
            q, args = _where("SELECT * FROM results WHERE (status='pending' OR (status='running' AND lease_expires < ?))"
                             " AND NOT (shard=0 AND shards>1)", [now], run=run, suite_version=suite_version)
            q += " ORDER BY step, task, shard, id"
            for row_id, token in lease_rows(db, "results", db.execute(q, args).fetchall(), owner, ttl, limit,
                                            max_attempts, now, reset=", external_id=NULL, host=NULL"):
                out.append((self.get(row_id), token))
        return out

    def claim_merges(self, owner: str, ttl: float, run: str | None = None, suite_version: str | None = None,
                     max_attempts: int = 3) -> list[tuple[Row, str, list[Row]]]:
        """Lease the task rows whose shards have all finished: (task row, token, its shard rows in order).

        The same lease as a job's (one transaction, a fresh token; an expired merge is taken over), so
        of any number of schedulers exactly one merges a task. A task with a failed or blocked shard
        becomes failed or blocked itself, naming the shard."""
        now = time.time()
        out = []
        with self.tx() as db:
            q, args = _where("SELECT * FROM results WHERE shard=0 AND shards>1 AND (status='pending' OR"
                             " (status='running' AND lease_expires < ?))", [now], run=run, suite_version=suite_version)
            for r in db.execute(q + " ORDER BY step, task, id", args).fetchall():
                parts = [_row(x) for x in db.execute(
                    "SELECT * FROM results WHERE run=? AND step=? AND fingerprint=? AND suite_version=? AND task=?"
                    " AND shard>0 ORDER BY shard", (r["run"], r["step"], r["fingerprint"], r["suite_version"],
                                                    r["task"]))]
                bad = next((p for p in parts if p.status in ("failed", "blocked")), None)
                if bad is not None:
                    first = (bad.error or "").strip().splitlines()[0] if bad.error else ""
                    db.execute("UPDATE results SET status=?, error=?, lease_token=NULL, lease_expires=NULL,"
                               " finished_at=? WHERE id=?",
                               (bad.status, f"shard {bad.shard}/{bad.shards} {bad.status}: {first}", now, r["id"]))
                    continue
                if len(parts) != r["shards"] or any(p.status != "finished" for p in parts):
                    continue
                if r["attempts"] >= max_attempts:
                    db.execute("UPDATE results SET status='failed', lease_token=NULL, finished_at=?,"
                               " error=COALESCE(error, '') || ? WHERE id=?",
                               (now, f"[gave up merging after {r['attempts']} attempts]", r["id"]))
                    continue
                token = uuid.uuid4().hex
                db.execute("UPDATE results SET status='running', attempts=attempts+1, lease_token=?, lease_owner=?,"
                           " lease_expires=?, runner='merge', host=? WHERE id=?",
                           (token, owner, now + ttl, socket.gethostname(), r["id"]))
                out.append((self.get(r["id"]), token, parts))
        return out

    def renew(self, row_id: int, token: str, ttl: float, owner: str | None = None) -> bool:
        """Extend a lease; False means the token is no longer current (stop working on the row)."""
        with self.tx() as db:
            cur = db.execute("UPDATE results SET lease_expires=?, lease_owner=COALESCE(?, lease_owner)"
                             " WHERE id=? AND lease_token=? AND status='running'",
                             (time.time() + ttl, owner, row_id, token))
            return cur.rowcount == 1

    def set_external(self, row_id: int, token: str, runner: str, external_id: str,
                     depends_on: str | None = None) -> bool:
        with self.tx() as db:
            cur = db.execute("UPDATE results SET runner=?, external_id=?, depends_on=? WHERE id=? AND lease_token=?"
                             " AND status='running'", (runner, external_id, depends_on, row_id, token))
            return cur.rowcount == 1

    def start(self, row_id: int, token: str, ttl: float, owner: str) -> bool:
        """The job begins: it becomes the lease owner; False if its lease is gone."""
        with self.tx() as db:
            cur = db.execute("UPDATE results SET started_at=?, host=?, lease_owner=?, lease_expires=?"
                             " WHERE id=? AND lease_token=? AND status='running'",
                             (time.time(), socket.gethostname(), owner, time.time() + ttl, row_id, token))
            return cur.rowcount == 1

    def finish(self, row_id: int, token: str, metrics: dict[str, float], n_examples: int | None,
               predictions: str | None, output_dir: str | None, eval_seconds: float | None,
               host: str | None = None, started_at: float | None = None) -> bool:
        """Record the result; only the current lease holder can (host/started_at: as the job reported them)."""
        now = time.time()
        with self.tx() as db:
            cur = db.execute(
                "UPDATE results SET status='finished', metrics=?, n_examples=?, predictions=?, output_dir=?,"
                " eval_seconds=?, host=COALESCE(?, host), started_at=COALESCE(?, started_at),"
                " wall_seconds=? - COALESCE(?, started_at, ?), finished_at=?, lease_token=NULL,"
                " lease_expires=NULL, error=NULL WHERE id=? AND lease_token=? AND status='running'",
                (json.dumps(metrics, sort_keys=True), n_examples, predictions, output_dir, eval_seconds,
                 host, started_at, now, started_at, now, now, row_id, token))
            return cur.rowcount == 1

    def fail(self, row_id: int, token: str | None, error: str, max_attempts: int = 3, retry: bool = True) -> bool:
        """Record a failed attempt: back to pending while attempts remain, else failed.

        token=None is for a scheduler acting on a row whose external job it saw die.
        """
        with self.tx() as db:
            return fail_row(db, "results", row_id, token, error, max_attempts, retry)

    def block(self, row_id: int, error: str) -> bool:
        """Never to run: its parent (the SLURM training job) failed."""
        with self.tx() as db:
            cur = db.execute("UPDATE results SET status='blocked', error=?, lease_token=NULL, lease_expires=NULL,"
                             " finished_at=? WHERE id=? AND status IN ('pending','running')",
                             (error, time.time(), row_id))
            return cur.rowcount == 1

    def counts(self, run: str | None = None) -> dict[str, int]:
        q, args = "SELECT status, COUNT(*) FROM results", []
        if run is not None:
            q += " WHERE run=?"
            args.append(run)
        return {s: n for s, n in self.db.execute(q + " GROUP BY status", args)}
