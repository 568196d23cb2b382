"""The result store: unique keys, leases, retries, terminal states, concurrent claimers."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import time

import pytest

from emotune.errors import EmotuneError
from emotune.scheduling.store import Store


def _store(tmp_path) -> Store:
    s = Store(tmp_path / "r.sqlite")
    s.enqueue("/run", 10, "fp10", "icl", "v1", ["sst2", "trec"], "/run/checkpoint-10", 1000, "emo")
    return s


def test_wal_and_unique_rows(tmp_path):
    s = _store(tmp_path)
    assert s.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s.enqueue("/run", 10, "fp10", "icl", "v1", ["sst2", "trec", "subj"], "/run/checkpoint-10") == 1
    # a new fingerprint or suite version is a new row; the same key is never a second row
    assert s.enqueue("/run", 10, "fp10b", "icl", "v1", ["sst2"], "/run/checkpoint-10") == 1
    assert s.enqueue("/run", 10, "fp10", "icl", "v2", ["sst2"], "/run/checkpoint-10") == 1
    assert len(s.rows("/run")) == 5 and s.counts("/run") == {"pending": 5}
    with pytest.raises(sqlite3.IntegrityError):
        s.db.execute("INSERT INTO results (run, step, fingerprint, suite, suite_version, task, checkpoint, created_at)"
                     " VALUES ('/run', 10, 'fp10', 'icl', 'v1', 'sst2', 'x', 0)")


def test_lease_protocol(tmp_path):
    s = _store(tmp_path)
    (a, ta), = s.claim("A", ttl=60, limit=1)
    (b, tb), = s.claim("B", ttl=60, limit=5)  # B gets the other row, never A's
    assert a.id != b.id and a.status == b.status == "running" and a.attempts == 1
    assert s.claim("C", ttl=60, limit=5) == []
    assert s.start(a.id, ta, 60, "job-a") and not s.start(a.id, tb, 60, "job-x")
    assert s.renew(a.id, ta, 60) and not s.renew(a.id, "stale", 60)
    assert s.finish(a.id, ta, {"accuracy": 0.5}, 8, "/p.jsonl", "/out", 1.5)
    assert not s.finish(a.id, ta, {"accuracy": 0.9}, 8, None, None, 1.0)  # finished is final
    r = s.get(a.id)
    assert r.status == "finished" and r.metrics == {"accuracy": 0.5} and r.lease_token is None
    assert r.host and r.wall_seconds >= 0 and r.eval_seconds == 1.5
    # B's job dies silently: its lease expires and C takes the row over with a new token
    s.db.execute("UPDATE results SET lease_expires=? WHERE id=?", (time.time() - 1, b.id))
    (c, tc), = s.claim("C", ttl=60)
    assert c.id == b.id and c.attempts == 2 and tc != tb and "expired" in c.error
    assert not s.renew(b.id, tb, 60) and not s.finish(b.id, tb, {"accuracy": 1.0}, 1, None, None, 0)
    assert s.claim("D", ttl=60) == []  # finished rows are never claimed again
    assert s.finish(c.id, tc, {"accuracy": 0.7}, 8, None, None, 1.0)
    assert s.counts() == {"finished": 2}


def test_failures_retry_then_give_up(tmp_path):
    s = _store(tmp_path)
    for attempt in (1, 2, 3):
        (r, t), = s.claim("A", ttl=60, limit=1, max_attempts=3)
        assert r.attempts == attempt
        assert s.fail(r.id, t, f"boom {attempt}", max_attempts=3)
    assert s.get(r.id).status == "failed" and s.get(r.id).error == "boom 3"
    # an expired lease on the last attempt also ends in failed, not in a fourth try
    (r2, t2), = s.claim("A", ttl=60, limit=1, max_attempts=1)
    s.db.execute("UPDATE results SET lease_expires=0 WHERE id=?", (r2.id,))
    assert s.claim("B", ttl=60, max_attempts=1) == []
    assert s.get(r2.id).status == "failed" and "gave up" in s.get(r2.id).error
    assert not s.fail(r2.id, t2, "late")  # a terminal row is left alone


def test_block_is_terminal(tmp_path):
    s = _store(tmp_path)
    (r, t), = s.claim("A", ttl=60)
    assert s.block(r.id, "training job 7 failed")
    assert s.claim("B", ttl=60, limit=5)[0][0].id != r.id
    assert s.get(r.id).status == "blocked" and not s.finish(r.id, t, {}, 0, None, None, 0)


def _claimer(path, owner, out):
    s = Store(path)
    got = []
    while True:
        c = s.claim(owner, ttl=600, limit=1)
        if not c:
            break
        got.append(c[0][0].id)
        s.finish(c[0][0].id, c[0][1], {"accuracy": 1.0}, 1, None, None, 0.0)
    out.put(got)


def test_concurrent_processes_claim_each_row_once(tmp_path):
    s = Store(tmp_path / "r.sqlite")
    s.enqueue("/run", 1, "fp", "icl", "v1", [f"task{i}" for i in range(60)], "/c")
    q = mp.get_context("fork").Queue()
    procs = [mp.get_context("fork").Process(target=_claimer, args=(tmp_path / "r.sqlite", f"w{i}", q))
             for i in range(4)]
    for p in procs:
        p.start()
    got = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    ids = [i for g in got for i in g]
    assert sorted(ids) == sorted(r.id for r in s.rows()) and s.counts() == {"finished": 60}


def test_not_a_database(tmp_path):
    bad = tmp_path / "results.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(EmotuneError, match="not a usable result store"):
        Store(bad)
