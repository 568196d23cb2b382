"""The result store's shard rows: a version-1 store migrates, shards are jobs, a task merges exactly once."""

from __future__ import annotations

import json
import multiprocessing as mp
import sqlite3
import time

import pytest

from emotune.errors import EmotuneError
from emotune.scheduling.store import Store
from emotune.scheduling.store_file import SCHEMA_VERSION

# The schema of version 1 (emotune before sharding), as such stores exist on disk.
V1_SCHEMA = """
CREATE TABLE results (
    id INTEGER PRIMARY KEY, run TEXT NOT NULL, step INTEGER NOT NULL, fingerprint TEXT NOT NULL,
    suite TEXT NOT NULL, suite_version TEXT NOT NULL, task TEXT NOT NULL, checkpoint TEXT NOT NULL,
    tokens_seen INTEGER, objective TEXT, status TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
    lease_token TEXT, lease_owner TEXT, lease_expires REAL, runner TEXT, external_id TEXT, depends_on TEXT,
    metrics TEXT, n_examples INTEGER, predictions TEXT, output_dir TEXT, eval_seconds REAL, wall_seconds REAL,
    host TEXT, created_at REAL NOT NULL, started_at REAL, finished_at REAL, error TEXT,
    UNIQUE (run, step, fingerprint, suite_version, task));
CREATE INDEX results_status ON results (run, status);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO results (run, step, fingerprint, suite, suite_version, task, checkpoint, status, attempts, metrics,
                     n_examples, created_at, finished_at)
    VALUES ('/run', 10, 'fp', 'icl', 'v1', 'sst2', '/run/checkpoint-10', 'finished', 1, '{"accuracy": 0.75}', 8, 1.0, 2.0);
INSERT INTO results (run, step, fingerprint, suite, suite_version, task, checkpoint, created_at)
    VALUES ('/run', 10, 'fp', 'icl', 'v1', 'trec', '/run/checkpoint-10', 1.0);
"""


def test_a_version_1_store_is_migrated_in_place(tmp_path):
    path = tmp_path / "results.sqlite"
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    db.close()
    s = Store(path)
    assert s.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION) == "2"
    done, pending = s.rows("/run")
    assert (done.task, done.status, done.metrics, done.n_examples, done.shard, done.shards) == \
        ("sst2", "finished", {"accuracy": 0.75}, 8, 0, 1)
    assert pending.task == "trec" and pending.status == "pending"
    # the old rows keep their keys; the key now has the shard
    assert s.enqueue("/run", 10, "fp", "icl", "v1", ["sst2", "trec"], "/run/checkpoint-10") == 0
    assert s.enqueue("/run", 20, "fp20", "icl", "v1", ["mmlu"], "/run/checkpoint-20", shards={"mmlu": 2}) == 2
    assert [r.task for r, _ in s.claim("x", 60, limit=5)] == ["trec", "mmlu", "mmlu"]
    s.close()
    assert len(Store(path).rows(shards=True)) == 5  # opened again: nothing migrated twice
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value='3' WHERE key='schema_version'")
    db.commit()
    db.close()
    with pytest.raises(EmotuneError, match="schema 3 is newer"):
        Store(path)


def _finish(s: Store, row, token):
    assert s.finish(row.id, token, {"accuracy": 0.5}, 2, None, f"/out/{row.shard}", 1.0)


def test_shard_rows_are_jobs_and_the_task_row_merges_once(tmp_path):
    s = Store(tmp_path / "r.sqlite")
    assert s.enqueue("/run", 10, "fp", "paper", "v", ["sst2", "mmlu"], "/ck", shards={"mmlu": 3}) == 4
    assert [(r.task, r.shard, r.shards) for r in s.rows(shards=True)] == \
        [("mmlu", 0, 3), ("mmlu", 1, 3), ("mmlu", 2, 3), ("mmlu", 3, 3), ("sst2", 0, 1)]
    assert [(r.task, r.shard) for r in s.rows()] == [("mmlu", 0), ("sst2", 0)]  # results see task rows only
    # changing `shards` later re-runs nothing: the task keeps the shards it was queued with
    assert s.enqueue("/run", 10, "fp", "paper", "v", ["sst2", "mmlu"], "/ck", shards={"mmlu": 5}) == 0
    jobs = s.claim("sched", 60, limit=10)
    assert sorted((r.task, r.shard) for r, _ in jobs) == [("mmlu", 1), ("mmlu", 2), ("mmlu", 3), ("sst2", 0)]
    assert s.claim("sched", 60, limit=10) == []  # the task row of a sharded task is never a job
    for row, token in jobs[:2]:
        _finish(s, row, token)
        assert s.claim_merges("sched", 60) == []  # not before the last shard
    _finish(s, *jobs[2])
    merges = s.claim_merges("a", 0.5)
    assert len(merges) == 1
    task_row, token, parts = merges[0]
    assert task_row.task == "mmlu" and [p.shard for p in parts] == [1, 2, 3] and task_row.attempts == 1
    assert s.claim_merges("b", 60) == []  # leased: nobody else merges
    time.sleep(0.6)
    (again, token2, _), = s.claim_merges("b", 60)  # the first merger died: its lease ran out
    assert again.attempts == 2 and not s.finish(task_row.id, token, {"accuracy": 0.1}, 6, None, None, 1.0)
    assert s.finish(again.id, token2, {"accuracy": 0.5}, 6, None, "/out", 3.0)
    assert s.claim_merges("c", 60) == [] and s.get(again.id).status == "finished"


def test_a_failed_shard_fails_its_task(tmp_path):
    s = Store(tmp_path / "r.sqlite")
    s.enqueue("/run", 10, "fp", "icl", "v", ["ag_news"], "/ck", shards={"ag_news": 2})
    (a, ta), (b, tb) = s.claim("x", 60, limit=5)
    _finish(s, a, ta)
    assert s.fail(b.id, tb, "evaluator exited with status 1\nTraceback ...", max_attempts=1)
    assert s.claim_merges("x", 60) == []
    task = s.rows()[0]
    assert task.status == "failed" and task.error == "shard 2/2 failed: evaluator exited with status 1"


def _merger(path, owner, out):
    s = Store(path)
    got = []
    deadline = time.time() + 10
    while time.time() < deadline:
        got += [r.id for r, _, _ in s.claim_merges(owner, 60)]
        if all(r.status != "pending" for r in s.rows()):
            break
    out.put(json.dumps(got))


def test_concurrent_schedulers_merge_each_task_once(tmp_path):
    path = tmp_path / "r.sqlite"
    s = Store(path)
    for step in range(6):
        s.enqueue("/run", step, f"fp{step}", "icl", "v", ["a", "b"], "/ck", shards={"a": 2, "b": 3})
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_merger, args=(str(path), f"m{i}", q)) for i in range(3)]
    for p in procs:
        p.start()
    for row, token in s.claim("jobs", 60, limit=100):  # shards finish while the mergers race
        _finish(s, row, token)
    merged = [i for _ in procs for i in json.loads(q.get(timeout=60))]
    for p in procs:
        p.join(30)
    assert sorted(merged) == sorted(r.id for r in s.rows()) and len(merged) == 12
