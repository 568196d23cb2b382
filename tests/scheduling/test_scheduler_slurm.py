"""The SLURM runner against a real one-node cluster (tests/slurm_cluster.py starts and stops it).

- eval jobs submitted with --dependency=afterok on a stand-in training job run after it and land in the store;
- a failed training job's dependants never run, and the scheduler reports them (blocked rows, exit 1);
- an eval job killed mid-way (scancel) is retried and its retry lands.

The evaluator is the counting evaluator (tests/scheduling_helpers.py): it records which SLURM job ran
it and when; the real `emotune eval` runs through the same job code in tests/test_scheduler_local.py.
"""

from __future__ import annotations

import subprocess
import time

from scheduling_helpers import PY, counting_evaluator, env, read_invocations, write_checkpoint, write_suite
from slurm_cluster import slurm_cluster  # noqa: F401  (the fixture)

from emotune.scheduling.store import Store, default_store_path


def _training_job(cluster, tmp_path, seconds: float, status: int) -> str:
    script = tmp_path / f"train-{status}.sbatch"
    script.write_text(f"#!/bin/bash\nsleep {seconds}\npython3 -c 'import time; print(time.time())' > "
                      f"{tmp_path}/train-{status}.done\nexit {status}\n")
    return cluster.sbatch(script, f"--output={tmp_path}/train-{status}-%j.out")


def _watch(cluster, run, suite, cmd, *extra, timeout=180):
    e = env()
    e.update(SLURM_CONF=cluster.env["SLURM_CONF"])
    return subprocess.run([PY, "-m", "emotune.cli", "watch", str(run), "--suite", str(suite), "--runner",
                           "slurm", "--eval-command", cmd, "--poll", "0.5", "--lease-ttl", "30", *extra],
                          env=e, capture_output=True, text=True, timeout=timeout, cwd=run.parent)


def test_afterok_eval_jobs_run_after_training_and_land_in_store(slurm_cluster, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for s in (10, 20):
        write_checkpoint(run, s)
    suite = write_suite(tmp_path, names=("tiny_a",))
    cmd, log = counting_evaluator(tmp_path)
    train = _training_job(slurm_cluster, tmp_path, 4, 0)
    res = _watch(slurm_cluster, run, suite, cmd, "--after", train, "--follow")
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    rows = Store(default_store_path(run)).rows()
    assert [(r.step, r.status, r.runner, r.depends_on) for r in rows] == [(10, "finished", "slurm", train),
                                                                         (20, "finished", "slurm", train)]
    trained_at = float((tmp_path / "train-0.done").read_text())
    calls = read_invocations(log)
    assert len(calls) == 2 and all(c["t"] > trained_at for c in calls)
    assert sorted(c["slurm_job"] for c in calls) == sorted(r.external_id for r in rows)
    for r in rows:  # submitted with the dependency; SLURM started them only after the training job ended
        assert slurm_cluster.job(r.external_id)["JobState"] == "COMPLETED" and r.started_at > trained_at
        # the job reported through job-result.json (no SQLite from compute nodes); the scheduler recorded it
        script = (run / "eval" / "slurm" / f"row-{r.id}-attempt-1.sbatch").read_text()
        assert "--row-json" in script and "--store" not in script and r.host


def test_failed_training_job_blocks_its_dependants(slurm_cluster, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_checkpoint(run, 10)
    suite = write_suite(tmp_path)
    cmd, log = counting_evaluator(tmp_path)
    train = _training_job(slurm_cluster, tmp_path, 4, 3)
    res = _watch(slurm_cluster, run, suite, cmd, "--after", train, "--follow")
    assert res.returncode == 1, res.stderr[-3000:]
    rows = Store(default_store_path(run)).rows()
    assert [(r.task, r.status) for r in rows] == [("tiny_a", "blocked"), ("tiny_b", "blocked")]
    assert all(r.external_id and f"training job {train}" in r.error for r in rows)  # submitted, then cancelled
    for r in rows:
        assert slurm_cluster.job(r.external_id).get("Reason") == "DependencyNeverSatisfied"
    assert read_invocations(log) == []  # never ran
    assert "blocked: step 10 tiny_a" in res.stdout and "blocked" in res.stderr
    # A checkpoint found after the parent failed is blocked without being submitted at all.
    write_checkpoint(run, 20)
    res = _watch(slurm_cluster, run, suite, cmd, "--after", train, "--once")
    late = [r for r in Store(default_store_path(run)).rows() if r.step == 20]
    assert [(r.status, r.external_id) for r in late] == [("blocked", None), ("blocked", None)]
    assert read_invocations(log) == []


def test_killed_eval_job_is_retried(slurm_cluster, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_checkpoint(run, 10, final=True)  # the run's last checkpoint: --follow ends once it is evaluated
    suite = write_suite(tmp_path, names=("tiny_a",))
    cmd, log = counting_evaluator(tmp_path)
    cmd += f" --hang-once {tmp_path / 'hung'}"
    e = env()
    e.update(SLURM_CONF=slurm_cluster.env["SLURM_CONF"])
    watch = subprocess.Popen([PY, "-m", "emotune.cli", "watch", str(run), "--suite", str(suite), "--runner",
                              "slurm", "--eval-command", cmd, "--poll", "0.5", "--lease-ttl", "30", "--follow"],
                             env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        store = Store(default_store_path(tmp_path / "run"))
        deadline = time.time() + 90
        while not (tmp_path / "hung").exists():  # the first attempt is inside the evaluator
            assert time.time() < deadline and watch.poll() is None
            time.sleep(0.2)
        first = store.rows()[0].external_id
        slurm_cluster.run("scancel", first)
        out, err = watch.communicate(timeout=120)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 0, err[-3000:]
    (row,) = store.rows()
    assert row.status == "finished" and row.attempts == 2 and row.external_id != first
    assert slurm_cluster.state(first)[0] == "CANCELLED" and slurm_cluster.state(row.external_id)[0] == "COMPLETED"
    assert [c["slurm_job"] for c in read_invocations(log)] == [first, row.external_id]
    assert f"SLURM job {first} ended CANCELLED" in err
