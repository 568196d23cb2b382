"""What a scheduler is told (`SchedulerSettings`): from `emotune watch`'s options or a pipeline's `eval:`
section, checked before anything is created, and the runner they make."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

from emotune.errors import EmotuneError
from emotune.scheduling.runners.base import DEFAULT_EVAL_COMMAND, Runner
from emotune.scheduling.runners.local import LocalRunner
from emotune.scheduling.runners.slurm import SlurmRunner


@dataclass(frozen=True)
class SchedulerSettings:
    """The scheduler's settings; the defaults are `emotune watch`'s (its options, in add_scheduler_args)."""
    runner: str = "local"  # local | slurm
    store: str | None = None  # result database (default RUN_DIR/eval/results.sqlite)
    eval_command: str = DEFAULT_EVAL_COMMAND
    eval_args: tuple[str, ...] = ()  # appended to the evaluator command; part of the suite version
    devices: str | None = None  # local: one job per entry, "0,1,2,3" or "0,1;2,3"; "cpu": no GPU
    jobs: int = 0  # local without devices: evaluations at once (0: one)
    lease_ttl: float = 120.0
    poll: float = 30.0
    max_attempts: int = 3
    after: str | None = None  # slurm: the training job the eval jobs wait for (afterok)
    sbatch_args: tuple[str, ...] = ()  # slurm: #SBATCH lines of every eval job
    setup: tuple[str, ...] = ()  # slurm: shell lines run first in each job script
    max_queued: int = 64  # slurm: this run's eval jobs in the queue at most

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SchedulerSettings:
        """From the options add_scheduler_args adds."""
        return cls(runner=args.runner, store=args.store, eval_command=args.eval_command,
                   eval_args=tuple(args.eval_arg), devices=args.devices, jobs=args.jobs, lease_ttl=args.lease_ttl,
                   poll=args.poll, max_attempts=args.max_attempts, after=args.after,
                   sbatch_args=tuple(args.sbatch_arg), setup=tuple(args.setup), max_queued=args.max_queued)

    def check(self) -> None:
        """Every number and list, before anything is created (errors name `emotune watch`'s options)."""
        for name, value, low in (("--lease-ttl", self.lease_ttl, 0.0), ("--poll", self.poll, 0.0)):
            if not value > low:  # also catches nan
                raise EmotuneError(f"{name} {value}: must be > 0 seconds")
        for name, value, low in (("--max-attempts", self.max_attempts, 1), ("--jobs", self.jobs, 0),
                                 ("--max-queued", self.max_queued, 1)):
            if value < low:
                raise EmotuneError(f"{name} {value}: must be at least {low}")
        if self.devices is not None:
            entries = self.devices.split(";" if ";" in self.devices else ",")
            if not all(e.strip() for e in entries):
                raise EmotuneError(f"--devices {self.devices!r}: an empty entry (use e.g. '0,1' or '0,1;2,3' or 'cpu')")
            for entry in entries:
                for dev in entry.strip().split(",") if ";" in self.devices else [entry.strip()]:
                    if dev.strip().lower() != "cpu" and not dev.strip().isdigit():
                        raise EmotuneError(f"--devices {self.devices!r}: {dev.strip()!r} is not a GPU index or 'cpu'")
        if self.runner == "slurm":
            from emotune.sbatch import check_sbatch_args

            check_sbatch_args(list(self.sbatch_args), "--sbatch-arg")
            if self.after is not None and not re.fullmatch(r"\d+(_\d+)?", str(self.after)):
                raise EmotuneError(f"--after {self.after!r}: not a SLURM job id")
        for line in self.setup:
            if "\n" in line or "\r" in line or "\x00" in line:
                raise EmotuneError(f"--setup {line!r}: one shell line per --setup (no newlines)")

    def local_devices(self) -> list[str | None] | None:
        """The local runner's slots: a device string each ("" hides the GPUs), or None to inherit them."""
        devices: list[str | None] | None = None
        if self.devices:
            devices = [d.strip() if d.strip().lower() != "cpu" else "" for d in
                       self.devices.split(";" if ";" in self.devices else ",")]
        if self.jobs:
            devices = (devices or [None]) * self.jobs if not self.devices else devices
        return devices


def build_runner(settings: SchedulerSettings, store_path: str, eval_command: str, run_dir: Path,
                 slots: dict | None = None) -> Runner:
    if settings.runner == "local":
        return LocalRunner(store_path, eval_command, settings.lease_ttl, settings.local_devices(),
                           log_dir=run_dir / "eval" / "logs", slots=slots)
    return SlurmRunner(store_path, eval_command, settings.lease_ttl, run_dir / "eval" / "slurm",
                       sbatch_args=list(settings.sbatch_args), after=settings.after, max_queued=settings.max_queued,
                       setup=list(settings.setup))


def add_scheduler_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--runner", choices=("local", "slurm"), default="local")
    ap.add_argument("--store", help="result database (default RUN_DIR/eval/results.sqlite)")
    ap.add_argument("--eval-command", default=DEFAULT_EVAL_COMMAND,
                    help="evaluator command with {model} {task} {suite} {out} {step} {python} placeholders "
                         "(split like a shell, run without one); default: %(default)s")
    ap.add_argument("--eval-arg", action="append", default=[], metavar="ARG",
                    help="setting appended to the evaluator command (repeatable), e.g. --eval-arg limit=200; "
                         "part of the suite version (changing it re-evaluates)")
    ap.add_argument("--devices", help="local runner: one job per entry, e.g. '0,1,2,3' or '0,1;2,3' (a job on two "
                                      "GPUs); 'cpu' = no GPU. Default: one job at a time in this environment")
    ap.add_argument("--jobs", type=int, default=0, help="local runner without --devices: evaluations at once (default 1)")
    ap.add_argument("--lease-ttl", type=float, default=120.0, help="seconds before a silent job is retried")
    ap.add_argument("--poll", type=float, default=30.0, help="seconds between passes (polling and --follow)")
    ap.add_argument("--max-attempts", type=int, default=3)
    ap.add_argument("--after", metavar="JOBID", help="slurm: the training job; eval jobs get --dependency=afterok:JOBID")
    ap.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                    help="slurm: an #SBATCH line for every eval job (repeatable), e.g. --sbatch-arg=--gres=gpu:1")
    ap.add_argument("--setup", action="append", default=[], metavar="LINE",
                    help="slurm: a shell line run first in each job script (module load ..., source venv/bin/activate)")
    ap.add_argument("--max-queued", type=int, default=64, help="slurm: this run's eval jobs in the queue at most")
