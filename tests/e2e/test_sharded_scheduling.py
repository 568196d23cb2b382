"""Sharded tasks through the real scheduler, LocalRunner and `emotune eval` on a tiny checkpoint: the merged
result is the unsharded one byte for byte, also with two schedulers racing and with a shard's job SIGKILLed
mid-evaluation (retried under the lease protocol); every shard is recorded once and each task merged once.
The SLURM runner runs a batch job per shard on a real one-node cluster (tests/slurm_cluster.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
from scheduling_helpers import PY, env, write_model_checkpoint
from slurm_cluster import slurm_cluster  # noqa: F401  (the fixture)

from emotune.scheduling.store import Store, default_store_path

pytestmark = pytest.mark.e2e  # real evaluator processes: about a minute each on 2 cores

ROWS = [("the movie was great fun", 1), ("a dull boring film", 0), ("great acting and superb", 1),
        ("no plot at all", 0), ("lovely story and fun", 1), ("awful mess of a film", 0),
        ("superb great fun", 1), ("boring and dull plot", 0), ("the acting was great", 1),
        ("a film with no fun", 0), ("great story", 1)]  # 11 test rows: shards of 3, 4 and 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from eval_builders import build_llama, build_tokenizer

    d = tmp_path_factory.mktemp("sharded")
    tok = build_tokenizer(d / "tok")
    model = build_llama(None, len(tok), seed=5)
    runs = {}
    for name in ("whole", "raced"):  # the same weights: the same fingerprint in every run
        runs[name] = d / name
        runs[name].mkdir()
        write_model_checkpoint(runs[name], 1, model, tok)
    data = d / "data"
    data.mkdir()
    for split in ("train", "test"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps({"text": t + (" again" if split == "train" else ""),
                                                                 "label": y}) + "\n" for t, y in ROWS))
    task = {"name": "reviews", "kind": "icl", "dataset": {"data_files": {"train": str(data / "train.jsonl"),
                                                                        "test": str(data / "test.jsonl")}},
            "input_columns": ["text"], "ice_num": 2,
            "templates": {0: "Review: <X> It is negative.", 1: "Review: <X> It is positive."}}
    (d / "reviews.yaml").write_text(json.dumps(task))
    (d / "whole.yaml").write_text(json.dumps(["reviews.yaml"]))
    (d / "sharded.yaml").write_text(json.dumps({"tasks": [{"task": "reviews.yaml", "shards": 3}]}))
    e = env()
    e["EMOTUNE_CACHE"] = str(d / "cache")
    res = _watch(e, runs["whole"], d / "whole.yaml", "--once")
    assert res.returncode == 0, res.stderr[-3000:]
    return d, runs, e


def _watch(e, run, suite, *extra):
    return subprocess.run(_cmd(run, suite, *extra), env=e, capture_output=True, text=True, timeout=600)


def _cmd(run, suite, *extra):
    return [PY, "-m", "emotune.cli", "watch", str(run), "--suite", str(suite), "--poll", "0.3",
            "--eval-arg", "batch_size=3", *extra]


def _task_dir(run, suite):
    (step_dir,) = (run / "eval" / suite).glob("step-1-*")
    return step_dir / "reviews"


def _whole(setup):
    d, runs, _ = setup
    (row,) = Store(default_store_path(runs["whole"])).rows()
    assert row.status == "finished" and row.shards == 1 and row.n_examples == len(ROWS)
    return row, (_task_dir(runs["whole"], "whole") / "reviews.predictions.jsonl").read_bytes()


def _check_merged(run, whole_row, whole_bytes):
    store = Store(default_store_path(run))
    (task,) = store.rows()
    shards = [r for r in store.rows(shards=True) if r.shard]
    assert task.status == "finished" and task.shards == 3 and [s.shard for s in shards] == [1, 2, 3]
    assert [s.n_examples for s in shards] == [3, 4, 4] and all(s.status == "finished" for s in shards)
    merged = _task_dir(run, "sharded") / "reviews.predictions.jsonl"
    assert task.predictions == str(merged) and merged.read_bytes() == whole_bytes
    assert task.metrics == whole_row.metrics and task.n_examples == whole_row.n_examples
    summary = json.loads((_task_dir(run, "sharded") / "summary.json").read_text())
    assert summary["tasks"]["reviews"]["metrics"] == whole_row.metrics
    return task, shards


def _evaluations(shard_row) -> int:
    """How often the job started the evaluator for this shard (run_job logs each command it runs)."""
    return sum(line.startswith("$ ") for line in (open(os.path.join(shard_row.output_dir, "eval.log")).read()
                                                  .splitlines()))


def test_racing_schedulers_and_a_killed_shard_merge_once_and_exactly(setup):
    """Two schedulers (one spreading jobs over --devices 0,1) share the sharded jobs; shard 2's job is
    SIGKILLed while its evaluator runs, so its lease runs out and it is evaluated again; the task is
    merged once, from shards each recorded once, into the unsharded result byte for byte."""
    d, runs, e = setup
    whole_row, whole_bytes = _whole(setup)
    run, ttl = runs["raced"], 10
    procs = [subprocess.Popen(_cmd(run, d / "sharded.yaml", "--once", "--lease-ttl", str(ttl), *extra), env=e,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for extra in (("--devices", "0,1"), ("--jobs", "1"))]
    store = Store(default_store_path(run))
    try:
        deadline, victim = time.time() + 180, None
        while time.time() < deadline and victim is None:
            victim = next((r for r in store.rows(shards=True) if r.shard == 2 and r.status == "running"
                           and r.started_at and r.external_id), None)
            logs = list((run / "eval" / "sharded").glob("step-1-*/reviews/shard-2-of-3/eval.log"))
            if not (logs and logs[0].read_text().count("$ ")):  # wait until its evaluator runs
                victim = None
            time.sleep(0.05)
        assert victim is not None, "shard 2 never started"
        os.killpg(int(victim.external_id.split(":")[1].split()[0]), signal.SIGKILL)  # the job and its evaluator
        logs = [p.communicate(timeout=600)[1] for p in procs]
        assert all(p.returncode == 0 for p in procs), [x[-3000:] for x in logs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    if store.get(victim.id).status == "running":  # both schedulers ended before the lease ran out: a third
        time.sleep(max(0.0, store.get(victim.id).lease_expires - time.time()) + 0.5)
        res = _watch(e, run, d / "sharded.yaml", "--once", "--lease-ttl", str(ttl))
        assert res.returncode == 0, res.stderr[-3000:]
        logs.append(res.stderr)
    task, shards = _check_merged(run, whole_row, whole_bytes)
    assert task.attempts == 1 and sum(x.count("merged step 1 reviews from 3 shards") for x in logs) == 1
    retried = shards[1]
    assert retried.attempts == 2 and _evaluations(retried) == 2  # killed once, evaluated again
    assert all(_evaluations(s) == s.attempts for s in shards)  # every attempt ran the evaluator once ...
    assert len({s.id for s in shards}) == 3  # ... and each shard holds one result
    on_gpus = [s.external_id.rsplit(" ", 1)[-1] for s in shards if " cuda:" in s.external_id]
    assert set(on_gpus) <= {"cuda:0", "cuda:1"}  # one job per device of --devices


def test_slurm_runs_a_job_per_shard_and_the_scheduler_merges(setup, slurm_cluster):
    """With the SLURM runner each shard is a batch job of its own (which never opens the store); the
    scheduler records their result files and merges: the unsharded result, byte for byte."""
    d, runs, e = setup
    whole_row, whole_bytes = _whole(setup)
    run = d / "slurm"
    run.mkdir()
    shutil.copytree(runs["whole"] / "checkpoint-1", run / "checkpoint-1")  # the same weights and manifest
    manifest = json.loads((run / "checkpoint-1" / "manifest.json").read_text())
    (run / "config.yaml").write_text(f"max_steps: {manifest['step']}\n")  # so --follow knows this is the last
    res = subprocess.run(_cmd(run, d / "sharded.yaml", "--runner", "slurm", "--follow", "--lease-ttl", "60"),
                         env={**e, "SLURM_CONF": slurm_cluster.env["SLURM_CONF"]}, capture_output=True, text=True,
                         timeout=600, cwd=d)
    assert res.returncode == 0, res.stderr[-3000:]
    _, shards = _check_merged(run, whole_row, whole_bytes)
    assert len({s.external_id for s in shards}) == 3 and all(s.runner == "slurm" for s in shards)
    for s in shards:
        assert slurm_cluster.job(s.external_id)["JobName"] == f"emotune-eval-1-reviews-{s.shard}of3"
        assert "--row-json" in (run / "eval" / "slurm" / f"row-{s.id}-attempt-1.sbatch").read_text()
