"""Fault test: schedulers SIGKILLed at random moments while checkpoints land, two at once part of the time.

Every (checkpoint, task) must end with exactly one finished row, and — since jobs hold leases and
survive their scheduler — be evaluated exactly once. Checkpoints without their marker or with a
truncated weights file land too and must never be evaluated.

The evaluator here is the counting evaluator (tests/scheduling_helpers.py): the test is about the
scheduler, store and leases over many job events, which the real `emotune eval` would make minutes
long; tests/test_scheduler_local.py runs the real evaluator through the same scheduler.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import time

from scheduling_helpers import PY, counting_evaluator, env, read_invocations, write_checkpoint, write_suite

from emotune.scheduling.store import Store, default_store_path


def test_sigkilled_schedulers_evaluate_each_checkpoint_task_exactly_once(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    suite = write_suite(tmp_path)
    cmd, log = counting_evaluator(tmp_path)
    watch = [PY, "-m", "emotune.cli", "watch", str(run), "--suite", str(suite), "--eval-command", cmd,
             "--lease-ttl", "30", "--poll", "0.2", "--jobs", "2"]  # generous: heartbeats of jobs on a loaded
    # 2-core machine can lag several seconds, and a lapsed lease is a (correct) retry this test would count
    rng = random.Random(20241128)
    procs: list[subprocess.Popen] = []
    kills, most_alive = 0, 0

    def alive():
        return [p for p in procs if p.poll() is None]

    def start():
        procs.append(subprocess.Popen(watch, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    steps = [10, 20, 30, 40, 50, 60, 70, 80]
    bad = []
    for step in steps:
        write_checkpoint(run, step, final=step == steps[-1])
        if step == 20:  # a checkpoint still being written (no COMPLETE marker)
            write_checkpoint(run, 25, complete=False)
            bad.append(25)
        if step == 40:  # a complete-looking checkpoint whose weights were truncated afterwards
            p = write_checkpoint(run, 45)
            w = p / "model.safetensors"
            w.write_bytes(w.read_bytes()[:100])
            bad.append(45)
        for _ in range(4):  # random scheduler events between checkpoint events
            time.sleep(rng.uniform(0.1, 0.7))
            if len(alive()) < 2 and rng.random() < 0.8:
                start()
            most_alive = max(most_alive, len(alive()))
            if alive() and rng.random() < 0.5:
                os.kill(rng.choice(alive()).pid, signal.SIGKILL)
                kills += 1
    if len(alive()) < 2:
        start()
    most_alive = max(most_alive, len(alive()))
    time.sleep(rng.uniform(0.5, 1.5))
    for p in alive():  # the last kills; jobs they started keep running on their own
        os.kill(p.pid, signal.SIGKILL)
        kills += 1
    for p in procs:
        p.wait()

    # A restarted scheduler in --follow mode drains the rest and exits once the final checkpoint is done.
    done = subprocess.run(watch + ["--follow"], env=env(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert kills >= 5 and most_alive == 2, (kills, most_alive)
    print(f"{kills} SIGKILLs over {len(procs) + 1} scheduler processes, at most {most_alive} at once")

    store = Store(default_store_path(run))
    rows = store.rows()
    keys = collections.Counter((r.step, r.task) for r in rows)
    assert sorted(keys) == sorted((s, t) for s in steps for t in ("tiny_a", "tiny_b"))
    assert set(keys.values()) == {1}
    assert all(r.status == "finished" for r in rows), [(r.step, r.task, r.status, r.error) for r in rows]
    assert all(r.metrics and 0 <= r.metrics["accuracy"] <= 1 for r in rows)
    assert all(r.predictions and os.path.isfile(r.predictions) for r in rows)
    # Each job ran once: no lease was ever held by two live jobs.
    calls = collections.Counter((os.path.basename(c["model"]), c["task"]) for c in read_invocations(log))
    assert calls == {(f"checkpoint-{s}", t): 1 for s in steps for t in ("tiny_a", "tiny_b")}, calls
    assert not any(f"checkpoint-{b}" == m for b in bad for m, _ in calls)
    assert "checkpoint-45" in done.stderr and "checkpoint-25" in done.stderr  # skipped with a warning
