"""The result store's file: its SQLite schema, opening (and checking) it, migrating an older one in place.

Used by emotune.scheduling.store, which holds the operations on its rows.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from emotune.errors import EmotuneError
from emotune.scheduling.leases import immediate_tx

SCHEMA_VERSION = 2  # 2: the shard columns (a version-1 store is migrated in place when opened)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    id              INTEGER PRIMARY KEY,
    run             TEXT NOT NULL,      -- the run directory (absolute)
    step            INTEGER NOT NULL,
    fingerprint     TEXT NOT NULL,      -- hash of the checkpoint's file hashes
    suite           TEXT NOT NULL,
    suite_version   TEXT NOT NULL,
    task            TEXT NOT NULL,
    checkpoint      TEXT NOT NULL,      -- path of the checkpoint folder
    tokens_seen     INTEGER,
    objective       TEXT,
    status          TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    lease_token     TEXT,
    lease_owner     TEXT,
    lease_expires   REAL,
    runner          TEXT,
    external_id     TEXT,               -- SLURM job id or local pid
    depends_on      TEXT,               -- SLURM training job id this eval waits for
    metrics         TEXT,               -- JSON {"accuracy": ...}
    n_examples      INTEGER,
    predictions     TEXT,               -- absolute path of the per-example JSONL
    output_dir      TEXT,
    eval_seconds    REAL,               -- as the evaluator measured it
    wall_seconds    REAL,               -- the whole job, start to finish
    host            TEXT,
    created_at      REAL NOT NULL,
    started_at      REAL,
    finished_at     REAL,
    error           TEXT,
    shard           INTEGER NOT NULL DEFAULT 0,  -- 0: the task's row, 1..shards: a shard of it (a job)
    shards          INTEGER NOT NULL DEFAULT 1,  -- how many shards the task's rows are split into
    UNIQUE (run, step, fingerprint, suite_version, task, shard)
);
CREATE INDEX IF NOT EXISTS results_status ON results (run, status);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""

def check_store_file(path: Path, create: bool) -> bool:
    """Whether the store exists; an existing file that is not an SQLite database (0 bytes, garbage) is an
    error, never silently re-created as an empty store over the results someone may still recover."""
    if not path.exists():
        if not create:
            raise EmotuneError(f"no result store at {path}")
        return False
    if not path.is_file():
        raise EmotuneError(f"{path}: is a directory, not a result store")
    # Never open() the database file here: closing any descriptor of it drops every POSIX lock this
    # process holds on it, including those of an SQLite connection in another thread (a job's heartbeat
    # opening a second handle), which lost committed results. Size by stat; garbage is refused by
    # SQLite itself on the first read in _prepare, before anything is written.
    wal = path.with_name(path.name + "-wal")
    # SQLite writes the header within moments of creating the file; an old 0-byte file is not a store
    # being created by another scheduler right now.
    st = path.stat()
    if st.st_size == 0 and not (wal.is_file() and wal.stat().st_size) and time.time() - st.st_mtime > 5:
        raise EmotuneError(f"{path}: not a usable result store (an empty 0-byte file); move it away or restore it")
    return True


def open_store_db(path: Path, timeout: float, create: bool) -> sqlite3.Connection:
    """A connection to the store at `path` (created with `create`), its schema current (WAL, autocommit)."""
    existed = check_store_file(path, create)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        db = sqlite3.connect(str(path), timeout=timeout, isolation_level=None)
    except sqlite3.DatabaseError as err:
        raise EmotuneError(f"{path}: not a usable result store ({err})") from None
    try:
        _prepare(db, path, existed, timeout)
    except BaseException:
        db.close()  # no -wal / -shm left beside a file we refused
        raise
    return db


def _prepare(db: sqlite3.Connection, path: Path, existed: bool, timeout: float) -> None:
    try:
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA busy_timeout=%d" % int(timeout * 1000))
        # Before anything that writes (journal mode, schema): an existing file must be our store. One
        # without any table yet is a store another scheduler is creating right now (its schema
        # transaction is not committed yet): this one waits for it below.
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if existed and tables and "results" not in tables:
            raise EmotuneError(f"{path}: not a usable result store (an SQLite database without emotune's "
                               "results table); refusing to add tables to it (give another --store)")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        with immediate_tx(db):
            if existed:
                _migrate(db)
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    db.execute(stmt)
            have = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if have is None:
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(have[0]) > SCHEMA_VERSION:
                raise EmotuneError(f"{path}: result store schema {have[0]} is newer than this emotune "
                                   f"({SCHEMA_VERSION}); upgrade emotune")
    except sqlite3.DatabaseError as err:
        raise EmotuneError(f"{path}: not a usable result store ({err})") from None


def _migrate(db: sqlite3.Connection) -> None:
    """Version 1 -> 2, inside _prepare's transaction (all or nothing; a second opener waits, then finds
    version 2): the table is rebuilt with the shard columns, since SQLite cannot change a UNIQUE key."""
    cols = [r[1] for r in db.execute("PRAGMA table_info(results)")]
    if "shard" in cols:
        return
    db.execute("ALTER TABLE results RENAME TO results_v1")
    db.execute("DROP INDEX IF EXISTS results_status")
    for stmt in _SCHEMA.split(";"):
        if stmt.strip():
            db.execute(stmt)
    names = ", ".join(cols)
    db.execute(f"INSERT INTO results ({names}) SELECT {names} FROM results_v1")
    db.execute("DROP TABLE results_v1")
    db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
