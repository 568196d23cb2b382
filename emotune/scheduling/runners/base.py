"""What the scheduler asks of a runner (`Runner`), and what every runner and its jobs share: the evaluator
command and where a job's outputs go.

A runner starts a leased row's job somewhere (`submit`), says how many more it may start now
(`capacity`), and, for jobs that do not report to the store themselves, what became of them (`poll`);
the scheduler never asks which runner it has.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from emotune.errors import EmotuneError
from emotune.sbatch import path_component
from emotune.scheduling.store import Row
from emotune.tasks.shards import shard_dir

DEFAULT_EVAL_COMMAND = "{python} -m emotune.cli eval --model {model} --tasks {task} --out {out} progress=false"
PLACEHOLDERS = ("python", "model", "task", "suite", "out", "step", "checkpoint", "shard")

# How the job is started: `python -m JOB_MODULE job ...` (emotune/scheduling/runners/__main__.py)
JOB_MODULE = "emotune.scheduling.runners"


def build_eval_command(template: str | list[str], **values: str) -> list[str]:
    """Split the template like a shell would (no shell runs), then fill placeholders per argument."""
    parts = shlex.split(template) if isinstance(template, str) else list(template)
    values.setdefault("python", sys.executable)
    values.setdefault("shard", "")
    try:
        return [p.format(**values) for p in parts]
    except (KeyError, IndexError, ValueError) as err:
        raise EmotuneError(f"eval command {template!r}: bad placeholder {err} (known: "
                           f"{', '.join('{' + p + '}' for p in PLACEHOLDERS)})") from None


def job_output_dir(run_dir: str | Path, row: Row) -> Path:
    # suite and task become directory names: one path component each, whatever the store holds
    task = (Path(run_dir) / "eval" / path_component(row.suite, "suite name") / f"step-{row.step}-{row.fingerprint[:8]}"
            / path_component(row.task, "task name"))
    return shard_dir(task, row.shard, row.shards) if row.shard else task  # a shard's outputs: inside the task's


@dataclass
class Launch:
    """A submitted job: the store's `runner`, `external_id` and `depends_on` columns of its row."""
    runner: str
    external_id: str
    depends_on: str | None = None


# JobStatus.outcome values
RESULT = "result"  # the job wrote its result (JobStatus.result): the scheduler records it
ALIVE = "alive"  # queued or running: the scheduler renews its lease
NEVER_RAN = "never-ran"  # it never will run (its parent job failed): cancelled and blocked
ENDED = "ended"  # gone without a result: the attempt failed (retried while attempts remain)
UNKNOWN = "unknown"  # the runner no longer knows it (purged): its lease runs out and the row is retried


@dataclass(frozen=True)
class JobStatus:
    """What `Runner.poll` saw of a submitted job."""
    outcome: str  # one of RESULT, ALIVE, NEVER_RAN, ENDED, UNKNOWN
    result: dict | None = None  # RESULT: what the job reported (runners.job.read_job_result)
    message: str = ""  # NEVER_RAN / ENDED: why, for the row's error


class Runner(Protocol):
    """Where a scheduler's jobs run (runners.local.LocalRunner, runners.slurm.SlurmRunner)."""

    name: str  # the store's `runner` column of the jobs it submits
    detached: bool  # its jobs run on their own, with no slot here to wait on: `watch --once` submits and returns

    def capacity(self, in_flight: int = 0) -> int:
        """How many more jobs may start now; `in_flight`: this run's rows the store holds as running under
        this runner (a runner that tracks its own slots may ignore it)."""
        ...

    def submit(self, row: Row, token: str, task_spec: str | None = None) -> Launch:
        """Start the job of a leased row (`token`: its lease); `task_spec`: what the evaluator's {task} becomes."""
        ...

    def poll(self, row: Row) -> JobStatus | None:
        """What became of a submitted job; None where the job reports to the store itself (lease, result)."""
        ...

    def cancel(self, external_id: str) -> None:
        """Stop a submitted job (its Launch.external_id); nothing if it is gone already."""
        ...

    def running(self) -> int:
        """Jobs this runner started that are still running here (what `watch --once` waits for)."""
        ...

    def parent_failed(self) -> str | None:
        """If the job its jobs wait for (`--after`) failed, which and how ("its training job 12 ended FAILED");
        None otherwise or without one."""
        ...
