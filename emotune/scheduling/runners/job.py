"""The evaluation job: what a local subprocess or a SLURM batch job runs. Both run the same job.

The job (`python -m emotune.scheduling.runners job ...`, function `run_job`):

1. starts only if its lease is still current, else exits quietly;
2. re-verifies the checkpoint against its manifest (a corrupt checkpoint is never evaluated);
3. runs the evaluator as a *separate* process (`emotune eval --model CKPT --tasks T --out DIR` by
   default; any command with {model} {task} {suite} {out} {step} placeholders) and kills it at once if
   the lease is lost; a shard's job gives it `shard=K/N` (appended, or where the command says {shard});
4. reads the evaluator's `summary.json` and records the result, or the failure (retried while
   attempts remain).

How a job talks to the store depends on the runner. Local jobs (`_StoreLink`) open the SQLite store
themselves: they take over the lease, renew it every ttl/4 and finish the row, so they outlive a killed
scheduler. SLURM jobs (`_FileLink`) never open it — on a cluster it may sit on NFS/Lustre, where
SQLite's WAL does not work — and write `job-result.json` beside their outputs instead; the scheduler
renews their lease while SLURM reports them alive and records the file. Evaluation never runs inside
the training processes.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from emotune.errors import ArgumentParser, EmotuneError
from emotune.scheduling.record import JOB_ENV, task_result
from emotune.scheduling.runners.base import DEFAULT_EVAL_COMMAND, JOB_MODULE, build_eval_command, job_output_dir
from emotune.scheduling.store import Row, Store


def _set_pdeathsig() -> None:
    """The evaluator dies with its job (Linux): a killed job never leaves an orphan evaluating."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: the lease check still stops the orphan's result
        pass


RESULT_FILE = "job-result.json"


class _StoreLink:
    """Local jobs talk to the store directly: lease start, heartbeat, result (one host, SQLite WAL)."""

    def __init__(self, store_path: str, row_id: int, token: str, ttl: float):
        self.store_path, self.row_id, self.token, self.ttl = store_path, row_id, token, ttl
        self.store = Store(store_path)
        self.owner = f"job:{socket.gethostname()}:{os.getpid()}"

    def start(self) -> Row | None:
        if not self.store.start(self.row_id, self.token, self.ttl, self.owner):
            return None
        return self.store.get(self.row_id)

    def heartbeat_store(self):
        return Store(self.store_path)

    def renew(self, store: Store) -> bool:
        return store.renew(self.row_id, self.token, self.ttl)

    def finish(self, **result) -> bool:
        return self.store.finish(self.row_id, self.token, **result)

    def fail(self, error: str, max_attempts: int, retry: bool = True) -> None:
        self.store.fail(self.row_id, self.token, error, max_attempts, retry=retry)


class _FileLink:
    """SLURM jobs never open the store: on a cluster it may sit on a network filesystem, where SQLite's WAL
    does not work. The job writes RESULT_FILE (atomically) beside its outputs; the scheduler, which renews
    the lease while SLURM reports the job alive, records it."""

    def __init__(self, row: dict, token: str):
        self.row = Row(**{**{k: None for k in Row.__dataclass_fields__}, **row, "lease_token": token})
        self.token = token
        self.started = time.time()

    def start(self) -> Row | None:
        path = job_output_dir(self.row.run, self.row) / RESULT_FILE
        path.unlink(missing_ok=True)
        return self.row

    def heartbeat_store(self):
        return None

    def renew(self, store) -> bool:
        return True

    def _write(self, obj: dict) -> None:
        from emotune.atomic import write_json

        write_json(job_output_dir(self.row.run, self.row) / RESULT_FILE,
                   {"token": self.token, "row": self.row.id, "host": socket.gethostname(),
                    "started_at": self.started, "finished_at": time.time(), **obj})

    def finish(self, **result) -> bool:
        self._write({"status": "finished", **result})
        return True

    def fail(self, error: str, max_attempts: int, retry: bool = True) -> None:
        self._write({"status": "failed", "error": error, "retry": retry})


def read_job_result(path: Path) -> dict | None:
    from emotune.atomic import read_json

    try:
        data = read_json(path)
    except EmotuneError:
        return None
    return data if isinstance(data, dict) and data.get("status") in ("finished", "failed") else None


def wait_under_lease(proc: subprocess.Popen, interval: float, open_renew) -> tuple[int, bool]:
    """Wait for a job's process while a heartbeat thread renews its lease every `interval` seconds; a lease
    that cannot be renewed (another runner took the row over) kills the process. `open_renew()` runs in the
    thread (an SQLite connection belongs to its thread) and returns (renew() -> bool, close()).
    Returns (exit status, whether the lease was lost)."""
    lost, exited = threading.Event(), threading.Event()

    def heartbeat():
        renew, close = open_renew()
        try:
            while not exited.wait(interval):
                if not renew():
                    lost.set()
                    proc.kill()
                    break
        finally:
            close()

    hb = threading.Thread(target=heartbeat, daemon=True)
    hb.start()
    rc = proc.wait()
    exited.set()
    hb.join()
    return rc, lost.is_set()


def run_job(link, eval_command: str, task_spec: str | None = None) -> int:
    """Run one leased (checkpoint, task) evaluation to the end. Exit status 0 = recorded or not ours."""
    # Long on purpose: the lease protocol (start, verify the files, run under a heartbeat, read the
    # summary, finish) is one sequence whose every exit must leave the row in a known state; split
    # into parts, the token checks and the kill-on-lost-lease path would be spread across them.
    from emotune.manifest import BadCheckpoint
    from emotune.scheduling.discovery import read_checkpoint

    row = link.start()
    if row is None:
        print("emotune job: lease no longer current; someone else has this job", file=sys.stderr)
        return 0
    row_id, ttl = row.id, getattr(link, "ttl", 60.0)
    max_attempts = int(os.environ.get("EMOTUNE_MAX_ATTEMPTS", "3"))
    try:
        ckpt = read_checkpoint(row.checkpoint)
        if ckpt.fingerprint != row.fingerprint:
            raise BadCheckpoint(f"its files changed since it was queued (fingerprint {ckpt.fingerprint}, "
                                f"queued {row.fingerprint})")
    except BadCheckpoint as err:
        link.fail(f"checkpoint {row.checkpoint} not evaluated: {err}", max_attempts, retry=False)
        print(f"emotune job {row_id}: checkpoint {row.checkpoint} not evaluated: {err}", file=sys.stderr)
        return 1
    out = job_output_dir(row.run, row)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").unlink(missing_ok=True)  # never read a previous attempt's summary
    shard = f"{row.shard}/{row.shards}" if row.shard else ""
    cmd = build_eval_command(eval_command, model=str(ckpt.model_path), task=task_spec or row.task, suite=row.suite,
                             out=str(out), step=str(row.step), checkpoint=row.checkpoint, shard=shard)
    if shard and "{shard}" not in str(eval_command):
        cmd.append(f"shard={shard}")  # emotune eval's option (a command of your own may place {shard})
    log_path = out / "eval.log"
    t0 = time.time()
    with open(log_path, "ab") as logf:
        logf.write(f"\n$ {shlex.join(cmd)}\n".encode())
        logf.flush()
        # JOB_ENV: `emotune eval` leaves recording this job's result to us (emotune.scheduling.record)
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, preexec_fn=_set_pdeathsig,
                                env={**os.environ, JOB_ENV: str(row_id)})

        def open_renew():
            beat = link.heartbeat_store()
            return (lambda: link.renew(beat)), (lambda: beat is not None and beat.close())

        rc, lost = wait_under_lease(proc, max(ttl / 4, 0.05), open_renew)
    if lost:
        print(f"emotune job {row_id}: lease lost while evaluating; stopped", file=sys.stderr)
        return 0
    if rc != 0:
        tail = log_path.read_text(errors="replace")[-1500:]
        link.fail(f"evaluator exited with status {rc}; end of {log_path}:\n{tail}", max_attempts)
        return 1
    from emotune.atomic import read_json

    try:  # the evaluator's summary.json (format: emotune.eval.summary; read as plain JSON, no eval import)
        result = task_result(read_json(out / "summary.json", "evaluation summary"), row.task, out)
    except (EmotuneError, OSError, ValueError, KeyError, TypeError, AttributeError, StopIteration) as err:
        link.fail(f"evaluator wrote no usable {out / 'summary.json'} for task {row.task}: {err!r}", max_attempts)
        return 1
    metrics = result["metrics"]
    if not link.finish(output_dir=str(out), **result):
        print(f"emotune job {row_id}: lease lost before the result was recorded", file=sys.stderr)
        return 0
    print(f"emotune job {row_id}: step {row.step} {row.task} {metrics} ({time.time() - t0:.1f}s)")
    return 0


# ---------------------------------------------------------------------------------------------- entry

def main(argv: list[str]) -> int:
    ap = ArgumentParser(prog=f"python -m {JOB_MODULE}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    j = sub.add_parser("job", help="run one leased evaluation job (started by a runner)")
    j.add_argument("--store", help="result database: the job records its own result (local runner)")
    j.add_argument("--id", type=int)
    j.add_argument("--row-json", help="the row, for a job that writes job-result.json instead (SLURM runner)")
    j.add_argument("--token", required=True)
    j.add_argument("--ttl", type=float, required=True)
    j.add_argument("--eval-command", default=DEFAULT_EVAL_COMMAND)
    j.add_argument("--task", help="what {task} becomes (a task name or task file); default: the row's task")
    try:
        args = ap.parse_args(argv)
        if args.store:
            link = _StoreLink(args.store, args.id, args.token, args.ttl)
        elif args.row_json:
            link = _FileLink(json.loads(args.row_json), args.token)
        else:
            raise EmotuneError("give --store and --id, or --row-json")
        return run_job(link, args.eval_command, args.task)
    except EmotuneError as err:
        print(f"emotune job: error: {err}", file=sys.stderr)
        return 2
