"""The SLURM runner: one generated `sbatch` script per job, `--dependency=afterok:<training job>` where given.

SLURM jobs never open the store (runners.job._FileLink): they write a result file beside their outputs,
which `poll` reads; while SLURM reports a job queued or running the scheduler renews its lease.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

from emotune.errors import EmotuneError
from emotune.sbatch import check_line_value, check_sbatch_args, job_name
from emotune.scheduling.runners.base import (
    ALIVE,
    ENDED,
    JOB_MODULE,
    NEVER_RAN,
    RESULT,
    UNKNOWN,
    JobStatus,
    Launch,
    job_output_dir,
)
from emotune.scheduling.runners.job import RESULT_FILE, read_job_result
from emotune.scheduling.store import Row

SLURM_ALIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING",
               "SIGNALING", "STAGE_OUT", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "STOPPED")
SLURM_FAILED = ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
                "DEADLINE", "REVOKED")


def _slurm(cmd: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise EmotuneError(f"{cmd[0]} not found: the slurm runner needs the SLURM client commands on PATH") from None
    if check and res.returncode != 0:
        raise EmotuneError(f"{shlex.join(cmd)} failed (status {res.returncode}): {res.stderr.strip()}")
    return res


def slurm_job_state(job_id: str) -> tuple[str | None, str | None]:
    """(state, reason) of a SLURM job, or (None, None) when SLURM no longer knows it."""
    res = _slurm(["squeue", "-h", "-j", job_id, "-o", "%T|%r"], check=False)
    line = res.stdout.strip().splitlines()[0] if res.returncode == 0 and res.stdout.strip() else ""
    if line:
        state, _, reason = line.partition("|")
        return state.strip(), reason.strip()
    res = _slurm(["scontrol", "show", "job", "-o", job_id], check=False)
    if res.returncode == 0 and "JobState=" in res.stdout:
        fields = dict(kv.split("=", 1) for kv in res.stdout.split() if "=" in kv)
        return fields.get("JobState"), fields.get("Reason")
    res = _slurm(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "State"], check=False)  # needs accounting
    if res.returncode == 0 and res.stdout.strip():
        return res.stdout.split()[0].split()[0], None
    return None, None


def slurm_job_failed(job_id: str) -> str | None:
    """The job's state if it failed (or was cancelled); None if it succeeded, is alive or unknown."""
    state, _ = slurm_job_state(job_id)
    if state and (state in SLURM_FAILED or state.startswith("CANCELLED")):
        return state
    return None


class SlurmRunner:
    """One generated `sbatch` script per job; `--dependency=afterok:<training job>` where given."""

    name = "slurm"
    detached = True  # the jobs are SLURM's: `watch --once` submits them and returns

    def __init__(self, store_path: str, eval_command: str, ttl: float, script_dir: str | Path,
                 sbatch_args: list[str] | None = None, after: str | None = None, max_queued: int = 64,
                 setup: list[str] | None = None):
        self.store_path, self.eval_command, self.ttl = store_path, eval_command, ttl
        self.script_dir = Path(script_dir)
        self.sbatch_args = check_sbatch_args(list(sbatch_args or []))
        self.after = after
        self.max_queued = max_queued
        self.setup = list(setup or [])  # shell lines run before the job (module load, conda activate...)

    def capacity(self, in_flight: int = 0) -> int:
        """Jobs this run may still queue: --max-queued less its jobs queued or running in SLURM (`in_flight`)."""
        return self.max_queued - in_flight

    def script(self, row: Row, token: str, task_spec: str | None = None) -> str:
        info = {k: getattr(row, k) for k in ("id", "run", "step", "fingerprint", "suite", "suite_version", "task",
                                             "checkpoint", "tokens_seen", "objective", "attempts", "shard", "shards")}
        job = [sys.executable, "-m", JOB_MODULE, "job", "--row-json", json.dumps(info),
               "--token", token, "--ttl", str(self.ttl), "--eval-command", self.eval_command,
               "--task", task_spec or row.task]
        # #SBATCH lines are read by sbatch, not a shell: every value is checked to stay on its line.
        output = check_line_value(f"{self.script_dir.resolve()}/row-{row.id}-attempt-{row.attempts}-%j.out",
                                  "eval script directory")
        for line in self.setup:
            check_line_value(line, "--setup")
        part = f"-{row.shard}of{row.shards}" if row.shard else ""  # a shard's job: emotune-eval-10-mmlu-3of8
        lines = ["#!/bin/bash",
                 f"#SBATCH --job-name={job_name(f'emotune-eval-{row.step}-{row.task}{part}')}",
                 f"#SBATCH --output={output}",
                 "#SBATCH --ntasks=1",
                 *[f"#SBATCH {a}" for a in check_sbatch_args(self.sbatch_args)],
                 "set -euo pipefail",
                 *self.setup,
                 f"cd {shlex.quote(str(Path.cwd()))}",
                 "exec " + shlex.join(job), ""]
        return "\n".join(lines)

    def submit(self, row: Row, token: str, task_spec: str | None = None) -> Launch:
        depends_on = self.after
        self.script_dir.mkdir(parents=True, exist_ok=True)
        path = self.script_dir / f"row-{row.id}-attempt-{row.attempts}.sbatch"
        from emotune.atomic import write_text

        write_text(path, self.script(row, token, task_spec))
        cmd = ["sbatch", "--parsable"]
        if depends_on:
            check_line_value(str(depends_on), "--after")
            cmd.append(f"--dependency=afterok:{depends_on}")
        res = _slurm(cmd + [str(path)])
        job_id = res.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise EmotuneError(f"sbatch printed {res.stdout!r}, not a job id")
        return Launch(self.name, job_id, depends_on)

    def poll(self, row: Row) -> JobStatus:
        """The job's result file if it wrote one under the row's current lease, else what SLURM says of it."""
        path = job_output_dir(row.run, row) / RESULT_FILE
        result = read_job_result(path)
        if result and result.get("token") == row.lease_token and row.lease_token:
            return JobStatus(RESULT, result)
        state, reason = slurm_job_state(row.external_id)
        if state == "COMPLETED":  # the result file may have landed between the two looks
            result = read_job_result(path)
            if result and result.get("token") == row.lease_token:
                return JobStatus(RESULT, result)
        if reason and "DependencyNeverSatisfied" in reason:
            return JobStatus(NEVER_RAN, message=f"never ran: its training job {row.depends_on} did not succeed "
                                                f"(SLURM job {row.external_id} {state}, {reason})")
        if state in SLURM_ALIVE:
            return JobStatus(ALIVE)
        if state in SLURM_FAILED or (state or "").startswith("CANCELLED") or state == "COMPLETED":
            return JobStatus(ENDED, message=f"SLURM job {row.external_id} ended {state}"
                                            f"{f' ({reason})' if reason and reason != 'None' else ''} "
                                            "before recording a result")
        return JobStatus(UNKNOWN)  # purged: the lease runs out and the row is retried

    def cancel(self, external_id: str) -> None:
        _slurm(["scancel", external_id], check=False)

    def running(self) -> int:
        return 0  # nothing runs here: the jobs are SLURM's

    def parent_failed(self) -> str | None:
        """afterok on a failed (or purged-as-failed) job would be treated as satisfied: look first."""
        state = slurm_job_failed(self.after) if self.after else None
        return f"its training job {self.after} ended {state}" if state else None
