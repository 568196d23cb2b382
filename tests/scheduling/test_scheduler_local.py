"""The scheduler with the local runner: the real `emotune eval` on tiny checkpoints, retries, devices, CLIs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from scheduling_helpers import PY, counting_evaluator, env, read_invocations, write_checkpoint, write_model_checkpoint, write_suite

from emotune.scheduling.store import Store, default_store_path


def _watch(run, suite, *extra, timeout=240):
    res = subprocess.run([PY, "-m", "emotune.cli", "watch", str(run), "--suite", str(suite), *extra],
                         env=env(), capture_output=True, text=True, timeout=timeout)
    return res


def test_real_evaluator_on_good_checkpoints_only(tmp_path, tiny_cache):
    """`emotune watch --once` runs `emotune eval` per (checkpoint, task); bad checkpoints are never evaluated."""
    from eval_builders import build_llama

    run = tmp_path / "run"
    run.mkdir()
    tok = tiny_cache.load_tokenizer("eval")
    for step, seed in ((1, 0), (2, 1)):
        write_model_checkpoint(run, step, build_llama(None, len(tok), seed=seed), tok)
    # no marker: still being written
    write_model_checkpoint(run, 3, build_llama(None, len(tok), seed=2), tok)
    (run / "checkpoint-3" / "COMPLETE").unlink()
    # truncated weights after the fact
    bad = write_model_checkpoint(run, 4, build_llama(None, len(tok), seed=3), tok)
    w = bad / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    suite = write_suite(tmp_path, names=("tiny_a",))
    e = env()
    e["EMOTUNE_CACHE"] = str(tmp_path / "cache")
    res = subprocess.run([PY, "-m", "emotune.cli", "watch", str(run), "--suite", str(suite), "--once",
                          "--jobs", "2", "--poll", "0.5"], env=e, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "skipping" in res.stderr and "checkpoint-3" in res.stderr and "checkpoint-4" in res.stderr

    rows = Store(default_store_path(run)).rows()
    assert [(r.step, r.task, r.status) for r in rows] == [(1, "tiny_a", "finished"), (2, "tiny_a", "finished")]
    for r in rows:
        summary = json.loads((run / "eval" / "tinysuite" / f"step-{r.step}-{r.fingerprint[:8]}" / "tiny_a"
                              / "summary.json").read_text())
        assert summary["model"] == str(run / f"checkpoint-{r.step}")
        assert r.metrics == summary["tasks"]["tiny_a"]["metrics"] and 0 <= r.metrics["accuracy"] <= 1
        assert r.n_examples == 6 and len(open(r.predictions).read().splitlines()) == 6
        assert r.host and r.wall_seconds > 0 and r.eval_seconds > 0 and r.tokens_seen == r.step * 1024
    assert not list((run / "eval" / "tinysuite").glob("step-3-*")) and not list((run / "eval" / "tinysuite").glob("step-4-*"))

    table = subprocess.run([PY, "-m", "emotune.cli", "results", str(run)], env=e, capture_output=True,
                           text=True, check=True).stdout
    assert "tiny_a" in table and f"{100 * rows[0].metrics['accuracy']:.2f}" in table
    as_json = json.loads(subprocess.run([PY, "-m", "emotune.cli", "results", str(run), "--json"], env=e,
                                        capture_output=True, text=True, check=True).stdout)
    assert [(d["step"], d["status"]) for d in as_json] == [(1, "finished"), (2, "finished")]
    assert "lease_token" not in as_json[0]


def test_crashed_job_retried_after_lease_expiry_and_failures_reported(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_checkpoint(run, 10)
    suite = write_suite(tmp_path, names=("tiny_a",))
    cmd, log = counting_evaluator(tmp_path)
    slow = cmd.replace("counting_eval.py", "slow_eval.py")
    (tmp_path / "slow_eval.py").write_text("import time\ntime.sleep(60)\n")
    # 1. A job whose evaluator hangs: SIGKILL the job (its evaluator dies with it) while it holds the lease.
    p = subprocess.Popen([PY, "-m", "emotune.cli", "watch", str(run), "--suite", str(suite), "--once",
                          "--eval-command", slow, "--lease-ttl", "4", "--poll", "0.2"], env=env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = Store(default_store_path(run))
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            rows = store.rows()
            if rows and rows[0].started_at and rows[0].external_id:
                break
            time.sleep(0.1)
        row = store.rows()[0]
        assert row.status == "running" and row.attempts == 1
        job_pid = int(row.external_id.split(":")[1].split()[0])
        os.killpg(job_pid, signal.SIGKILL)  # the job and its evaluator (one process group)
    finally:
        p.kill()
        p.wait()
    # 2. Until the lease runs out nobody takes the row; after it, the next scheduler retries it.
    assert store.claim("probe", ttl=4) == []
    time.sleep(4.5)
    res = _watch(run, suite, "--once", "--eval-command", cmd, "--lease-ttl", "4", "--poll", "0.2")
    r = store.get(row.id)
    assert res.returncode == 0 and r.status == "finished" and r.attempts == 2, (r, res.stderr[-2000:])
    assert len(read_invocations(log)) == 1  # the killed attempt never reached the counting evaluator

    # 3. An evaluator failing once is retried at once; one failing always ends `failed`, reported, exit 1.
    write_checkpoint(run, 20)
    once = f"{cmd} --fail-once {tmp_path / 'failed-once'}"
    res = _watch(run, suite, "--once", "--eval-command", once, "--poll", "0.2")
    assert res.returncode == 0, res.stderr[-2000:]
    assert [(x.step, x.status, x.attempts) for x in store.rows()] == [(10, "finished", 2), (20, "finished", 2)]
    write_checkpoint(run, 30)
    always = f"{PY} -c 'import sys; sys.exit(5)'"
    res = _watch(run, suite, "--once", "--eval-command", always, "--poll", "0.2", "--max-attempts", "2")
    assert res.returncode == 1
    failed = [x for x in store.rows() if x.status == "failed"]
    assert [(x.step, x.attempts) for x in failed] == [(30, 2)]
    assert "exited with status 5" in failed[0].error and "failed: step 30 tiny_a" in res.stdout
    table = subprocess.run([PY, "-m", "emotune.cli", "results", str(run)], env=env(), capture_output=True,
                           text=True, check=True).stdout
    assert "failed: step 30 tiny_a: evaluator exited with status 5" in table


def test_local_runner_assigns_devices(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for s in (1, 2):
        write_checkpoint(run, s)
    suite = write_suite(tmp_path)
    cmd, log = counting_evaluator(tmp_path)
    res = _watch(run, suite, "--once", "--eval-command", cmd, "--devices", "0,1", "--poll", "0.2")
    assert res.returncode == 0, res.stderr[-2000:]
    cuda = [c["cuda"] for c in read_invocations(log)]
    assert len(cuda) == 4 and set(cuda) == {"0", "1"}


def test_runners_sharing_a_slot_table_hold_the_jobs_limit_together(tmp_path):
    """A pipeline has one scheduler per run; with `eval.jobs: 1` its runs together run one evaluation at a time,
    not one each (six at once on two cores made the demo's evaluations fight over them)."""
    from emotune.scheduling.runners.local import LocalRunner

    slots: dict = {}
    a, b = (LocalRunner(str(tmp_path / f"{n}.sqlite"), "true", 60.0, [None], slots=slots) for n in "ab")
    alone = LocalRunner(str(tmp_path / "c.sqlite"), "true", 60.0, [None])
    job = subprocess.Popen(["sleep", "30"])
    try:
        a.procs[0] = job  # a job of runner a in the one slot
        a.mine.add(job.pid)
        assert a.capacity() == b.capacity() == 0 and alone.capacity() == 1
        assert (a.running(), b.running()) == (1, 0)  # each counts (and waits for) only its own jobs
    finally:
        job.kill()
        job.wait()
    assert a.capacity() == b.capacity() == 1


def test_local_runner_cancels_only_its_own_jobs(tmp_path):
    """cancel(external_id) stops the job's whole process session (the job and its evaluator), not another's."""
    import socket

    from emotune.scheduling.runners.local import LocalRunner

    runner = LocalRunner(str(tmp_path / "a.sqlite"), "true", 60.0, [None, None])
    # a job and the evaluator it started, in their own session as submit() starts them
    pidfile = tmp_path / "evaluator.pid"
    job = subprocess.Popen(["sh", "-c", f"sleep 30 & echo $! > {pidfile}; wait"], start_new_session=True)
    other = subprocess.Popen(["sleep", "30"], start_new_session=True)  # not this runner's
    try:
        runner.procs[0] = job
        runner.mine.add(job.pid)
        host = socket.gethostname()
        runner.cancel(f"{host}:{other.pid}")
        runner.cancel(f"elsewhere:{job.pid} cuda:0")  # another host's pid is not ours
        assert other.poll() is None and job.poll() is None and runner.running() == 1
        deadline = time.time() + 10
        while not pidfile.is_file() or not pidfile.read_text().strip():
            assert time.time() < deadline
            time.sleep(0.05)
        evaluator = pidfile.read_text().strip()
        runner.cancel(f"{host}:{job.pid} cuda:0")
        assert job.poll() is not None and runner.running() == 0 and runner.capacity() == 2
        while _alive(evaluator):  # the evaluator dies with the job (its session), soon after
            assert time.time() < deadline, "the job's evaluator outlived the cancelled job"
            time.sleep(0.05)
    finally:
        for p in (job, other):
            p.kill()
            p.wait()


def _alive(pid: str) -> bool:
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"  # a zombie waiting to be reaped is dead


def test_watch_rejects_bad_input(tmp_path):
    suite = write_suite(tmp_path)
    res = _watch(tmp_path / "nope", suite, "--once")
    assert res.returncode == 2 and "does not exist" in res.stderr and "Traceback" not in res.stderr
    (tmp_path / "run").mkdir()
    res = _watch(tmp_path / "run", "no_such_suite", "--once")
    assert res.returncode == 2 and "unknown suite" in res.stderr and "Traceback" not in res.stderr
    res = _watch(tmp_path / "run", suite, "--once", "--eval-command", "x {modle}")
    assert res.returncode == 2 and "placeholder" in res.stderr


@pytest.mark.parametrize("bad", ["garbage", ""])
def test_results_on_bad_store(tmp_path, bad):
    (tmp_path / "eval").mkdir()
    if bad:
        (tmp_path / "eval" / "results.sqlite").write_text(bad * 100)
    res = subprocess.run([PY, "-m", "emotune.cli", "results", str(tmp_path)], env=env(),
                         capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert ("not a usable result store" if bad else "no result store") in res.stderr


def test_checkpoint_corrupted_after_queueing_is_never_evaluated(tmp_path):
    """The job verifies the checkpoint again right before evaluating it."""
    from emotune.scheduling.runners.local import LocalRunner
    from emotune.scheduling.scheduler import Scheduler, resolve_suite, run_once

    run = tmp_path / "run"
    run.mkdir()
    ckpt = write_checkpoint(run, 10)
    suite = write_suite(tmp_path, names=("tiny_a",))
    cmd, log = counting_evaluator(tmp_path)
    store = Store(tmp_path / "r.sqlite")
    sched = Scheduler(run, resolve_suite(str(suite)), store, LocalRunner(str(tmp_path / "r.sqlite"), cmd, 30.0), 30.0)
    assert sched.enqueue() == 1  # queued while intact
    w = ckpt / "model.safetensors"
    w.write_bytes(w.read_bytes()[:10])  # then truncated
    run_once(sched, 0.2)
    (row,) = store.rows()
    assert row.status == "failed" and row.attempts == 1 and "not evaluated" in row.error and "SHA-256" in row.error
    assert read_invocations(log) == []


def test_suite_version_follows_the_evaluator_protocol(monkeypatch):
    """Results stored under an older scoring protocol (another default) are not current for the scheduler."""
    import emotune.tasks.task as tasks
    from emotune.scheduling.scheduler import resolve_suite

    now = resolve_suite("icl").version
    assert resolve_suite("icl").version == now  # deterministic
    monkeypatch.setattr(tasks, "PROTOCOL", tasks.PROTOCOL + 1)
    assert resolve_suite("icl").version != now
