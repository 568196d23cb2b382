"""The lease steps every job table shares (the result store's `results`, the pairwise store's `pairwise`):
one write transaction, claiming runnable rows under a fresh token, a failed attempt. The protocol is
described in emotune.scheduling.store."""

from __future__ import annotations

import sqlite3
import time
import uuid
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def immediate_tx(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction; IMMEDIATE takes the write lock up front so check-then-set is atomic."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def lease_rows(db: sqlite3.Connection, table: str, found: list, owner: str, ttl: float, limit: int,
               max_attempts: int, now: float, reset: str = "") -> list[tuple[int, str]]:
    """The lease step of every job table (results, pairwise), inside the caller's transaction: each runnable
    row of `found` (pending, or running under an expired lease) gets a fresh token, up to `limit`; a row that
    already used `max_attempts` becomes failed instead. `reset`: more columns to clear (", col=NULL")."""
    out: list[tuple[int, str]] = []
    for r in found:
        if len(out) >= limit:
            break
        if r["attempts"] >= max_attempts:
            db.execute(f"UPDATE {table} SET status='failed', lease_token=NULL, finished_at=?,"
                       " error=COALESCE(error, '') || ? WHERE id=?",
                       (now, f"[gave up after {r['attempts']} attempts]", r["id"]))
            continue
        token = uuid.uuid4().hex
        note = None
        if r["status"] == "running":
            note = f"lease of {r['lease_owner']} expired (attempt {r['attempts']} died); retrying"
        db.execute(f"UPDATE {table} SET status='running', attempts=attempts+1, lease_token=?, lease_owner=?,"
                   f" lease_expires=?, started_at=NULL{reset}, error=COALESCE(?, error) WHERE id=?",
                   (token, owner, now + ttl, note, r["id"]))
        out.append((r["id"], token))
    return out


def fail_row(db: sqlite3.Connection, table: str, row_id: int, token: str | None, error: str, max_attempts: int,
             retry: bool) -> bool:
    """A running row's attempt failed (inside the caller's transaction): pending again while attempts are left
    and `retry`, else failed. Only the lease holder may (`token`; None: a scheduler that saw the job die)."""
    r = db.execute(f"SELECT attempts, status, lease_token FROM {table} WHERE id=?", (row_id,)).fetchone()
    if r is None or r["status"] != "running" or (token is not None and r["lease_token"] != token):
        return False
    status = "pending" if retry and r["attempts"] < max_attempts else "failed"
    db.execute(f"UPDATE {table} SET status=?, error=?, lease_token=NULL, lease_expires=NULL,"
               " finished_at=CASE WHEN ?='failed' THEN ? END WHERE id=?",
               (status, error[-2000:], status, time.time(), row_id))
    return True
