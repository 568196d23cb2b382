"""The scheduler: evaluate every (checkpoint, task) of a run exactly once, as checkpoints land.

One pass (`tick`) does, in order:

1. discover the run's good checkpoints (emotune.scheduling.discovery) and enqueue one pending row per
   (checkpoint, task) of the suite (`INSERT OR IGNORE`: a known key is never queued twice);
2. reconcile the jobs the runner polls (SLURM's; emotune.scheduling.runners): record a result, renew
   the lease of a job still queued or running, retry one that was killed, block (and report) the
   dependants of a failed training job;
3. claim runnable rows (pending, or running under an expired lease) up to the runner's free slots and
   launch a job for each (emotune.scheduling.runners);
4. merge every sharded task whose last shard has finished (emotune.tasks.shards), under a lease of its own so
   that exactly one scheduler merges it.

`emotune watch` repeats passes: `--once` (one pass, then wait for the local jobs it started: cron,
Kubernetes CronJob), a polling loop (default), or `--follow` (until the run's final checkpoint is
evaluated). Any number of schedulers may watch one store: the lease protocol in emotune.scheduling.store
keeps each job to one runner at a time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from emotune.errors import ArgumentParser, EmotuneError
from emotune.scheduling.discovery import Checkpoint, Discovery, read_run_config
from emotune.scheduling.harness_suite import harness_eval_command, resolve_harness_suite
from emotune.scheduling.runners.base import (
    ALIVE,
    DEFAULT_EVAL_COMMAND,
    ENDED,
    NEVER_RAN,
    RESULT,
    Runner,
    build_eval_command,
    job_output_dir,
)
from emotune.scheduling.runners.slurm import SLURM_ALIVE, slurm_job_state
from emotune.scheduling.settings import SchedulerSettings, add_scheduler_args, build_runner
from emotune.scheduling.store import TERMINAL, Store, default_store_path
from emotune.tasks.harness import HARNESS
from emotune.tasks.shards import merge_shards
from emotune.tasks.suites import find_suite, suite_members, suites_help

log = logging.getLogger("emotune.scheduling.scheduler")


# ---------------------------------------------------------------------------------------------- suites

@dataclass(frozen=True)
class Suite:
    name: str
    version: str  # changes whenever a task definition or the evaluation command changes
    tasks: tuple[str, ...]  # what the evaluator's --tasks gets: a task name or a task file's path
    labels: tuple[str, ...] = field(default=())  # the task names, as the evaluator's summary.json keys them
    shards: tuple[int, ...] = field(default=())  # jobs per (checkpoint, task); 1 = not sharded
    evaluator: str = "emotune"  # or "lm_eval": lm-evaluation-harness (emotune.scheduling.harness_suite)


def resolve_suite(name: str, eval_args: list[str] | tuple[str, ...] = ()) -> Suite:
    """A suite file or a shipped suite (emotune.tasks.suites), with the version its results are stored under."""
    from emotune.tasks.task import PROTOCOL

    found = find_suite(name)
    if found.evaluator == HARNESS:  # {evaluator: lm_eval, tasks: [...]}
        return Suite(*resolve_harness_suite(found, eval_args), evaluator=HARNESS)
    members = suite_members(found)
    # What the scores depend on: the task definitions, the evaluator's extra settings (not paths/commands)
    # and its scoring protocol (a changed default is a new suite version).
    digest = hashlib.sha256(json.dumps({"tasks": [m.task.definition for m in members], "eval_args": list(eval_args),
                                        "protocol": PROTOCOL}, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Suite(found.name, digest, tuple(m.spec for m in members), tuple(m.task.name for m in members),
                 tuple(m.shards for m in members))


# ---------------------------------------------------------------------------------------------- scheduler

@dataclass
class TickReport:
    checkpoints: int = 0
    queued: int = 0
    launched: int = 0
    retried: int = 0
    merged: int = 0
    blocked: list[str] = field(default_factory=list)


def training_finished(run_dir: Path, checkpoints: list[Checkpoint]) -> bool:
    """Has the run written its last checkpoint? (manifest `final`, or max_steps from the run's config)."""
    if any(c.final for c in checkpoints):
        return True
    try:
        cfg = read_run_config(run_dir)  # the training stage's resolved config
    except EmotuneError as err:
        log.warning("%s", err)
        return False
    max_steps = cfg.get("max_steps", -1) if cfg is not None else -1
    return isinstance(max_steps, int) and max_steps > 0 and any(c.step >= max_steps for c in checkpoints)


class Scheduler:
    def __init__(self, run_dir: str | Path, suite: Suite, store: Store, runner: Runner, ttl: float = 120.0,
                 max_attempts: int = 3, after: str | None = None):
        self.run_dir = Path(run_dir).resolve()
        self.run = str(self.run_dir)
        self.suite, self.store, self.runner = suite, store, runner
        self.ttl, self.max_attempts, self.after = ttl, max_attempts, after
        self.owner = f"scheduler:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.discovery = Discovery(self.run_dir)
        self.checkpoints: list[Checkpoint] = []

    # -- 1. discover + enqueue
    def enqueue(self) -> int:
        self.checkpoints = self.discovery.scan()
        n = 0
        for c in self.checkpoints:
            n += self.store.enqueue(self.run, c.step, c.fingerprint, self.suite.name, self.suite.version,
                                    list(self.suite.labels), str(c.path), c.tokens_seen, c.objective,
                                    shards=dict(zip(self.suite.labels, self.suite.shards)))
        return n

    def _task_spec(self, label: str) -> str:
        return self.suite.tasks[self.suite.labels.index(label)]

    # -- 2. reconcile the jobs that do not report to the store themselves (SLURM's)
    def reconcile(self, report: TickReport) -> None:
        for row in self.store.rows(self.run, "running", shards=True):
            if row.suite_version != self.suite.version or row.runner != self.runner.name or not row.external_id:
                continue
            seen = self.runner.poll(row)
            if seen is None:  # the job reports to the store itself
                continue
            if seen.outcome == RESULT:
                self._record(row, seen.result, report)
            elif seen.outcome == NEVER_RAN:
                self.runner.cancel(row.external_id)
                if self.store.block(row.id, seen.message):
                    report.blocked.append(f"step {row.step} {row.task}: {seen.message}")
            elif seen.outcome == ALIVE:
                if row.lease_token:
                    self.store.renew(row.id, row.lease_token, self.ttl)
            elif seen.outcome == ENDED:
                if self.store.fail(row.id, row.lease_token, seen.message, self.max_attempts):
                    report.retried += 1
                    log.warning("step %d %s: %s; %s", row.step, row.task, seen.message,
                                "retrying" if self.store.get(row.id).status == "pending" else "giving up")
            # UNKNOWN (purged): the lease runs out and the row is retried.

    def _record(self, row, result: dict, report: TickReport) -> None:
        """Store what a job reported in its result file (runners.job._FileLink)."""
        if result["status"] == "finished":
            ok = self.store.finish(row.id, row.lease_token, result.get("metrics") or {}, result.get("n_examples"),
                                   result.get("predictions"), result.get("output_dir"), result.get("eval_seconds"),
                                   host=result.get("host"), started_at=result.get("started_at"))
            if ok:
                log.info("finished step %d %s on %s (SLURM job %s)", row.step, row.task, result.get("host"),
                         row.external_id)
        else:
            self.store.fail(row.id, row.lease_token, str(result.get("error")), self.max_attempts,
                            retry=bool(result.get("retry", True)))
            log.warning("step %d %s failed (SLURM job %s): %s", row.step, row.task, row.external_id,
                        str(result.get("error")).splitlines()[0])

    # -- 3. claim + launch
    def launch(self, report: TickReport) -> None:
        # this run's jobs queued or running under this runner (SLURM's count against --max-queued)
        in_flight = sum(1 for r in self.store.rows(self.run, "running", shards=True) if r.runner == self.runner.name)
        free = self.runner.capacity(in_flight)
        if free <= 0:
            return
        claimed = self.store.claim(self.owner, self.ttl, self.run, self.suite.version, limit=free,
                                   max_attempts=self.max_attempts)
        parent = self.runner.parent_failed() if claimed else None
        for row, token in claimed:
            if parent:  # its jobs would wait for a job that failed
                msg = f"never ran: {parent}"
                if self.store.block(row.id, msg):
                    report.blocked.append(f"step {row.step} {row.task}: {msg}")
                continue
            try:
                launched = self.runner.submit(row, token, self._task_spec(row.task))
            except Exception as err:  # noqa: BLE001 - recorded on the row; the next pass retries
                log.error("could not launch step %d %s: %s", row.step, row.task, err)
                self.store.fail(row.id, token, f"launch failed: {err}", self.max_attempts)
                continue
            self.store.set_external(row.id, token, launched.runner, launched.external_id, launched.depends_on)
            report.launched += 1
            log.info("launched step %d %s%s (%s %s, attempt %d)", row.step, row.task,
                     f" shard {row.shard}/{row.shards}" if row.shard else "", launched.runner, launched.external_id,
                     row.attempts)

    # -- 4. merge sharded tasks
    def merge(self, report: TickReport) -> None:
        """Merge each task whose shards have all finished; the task row's lease makes it exactly once."""
        for row, token, parts in self.store.claim_merges(self.owner, self.ttl, self.run, self.suite.version,
                                                         self.max_attempts):
            out = job_output_dir(row.run, row)
            try:
                result = merge_shards(row.task, [Path(p.output_dir or job_output_dir(p.run, p)) for p in parts], out)
            except (EmotuneError, OSError, ValueError, KeyError, TypeError) as err:
                log.error("step %d %s: merging its %d shards failed: %s", row.step, row.task, row.shards, err)
                self.store.fail(row.id, token, f"merging its {row.shards} shards failed: {err}", self.max_attempts)
                continue
            started = min((p.started_at for p in parts if p.started_at), default=None)
            if self.store.finish(row.id, token, result["metrics"], result["n_examples"], result["predictions"],
                                 str(out), result["seconds"], started_at=started):
                report.merged += 1
                log.info("merged step %d %s from %d shards: %s", row.step, row.task, row.shards,
                         {k: v for k, v in result["metrics"].items() if "/" not in k})

    def tick(self) -> TickReport:
        report = TickReport()
        report.queued = self.enqueue()
        report.checkpoints = len(self.checkpoints)
        if report.queued:
            log.info("queued %d new job(s) (%d checkpoint(s) found)", report.queued, report.checkpoints)
        self.reconcile(report)
        self.launch(report)
        self.merge(report)
        for line in report.blocked:
            log.warning("blocked: %s", line)
        return report

    # -- state
    def rows(self):
        return [r for r in self.store.rows(self.run, shards=True) if r.suite_version == self.suite.version]

    def all_done(self) -> bool:
        """Every row terminal. None at all counts as done: `finished` asks only once training is over and the
        last pass queued what landed, so no row means no checkpoint (a run that failed before its first one
        kept `emotune pipeline` draining forever)."""
        return all(r.status in TERMINAL for r in self.rows())

    def finished(self, training_over: Callable[[], bool] | None = None) -> bool:
        """--follow's stop: the final checkpoint exists (or training ended) and every job is terminal."""
        over = training_finished(self.run_dir, self.checkpoints)
        if not over and training_over is not None:
            over = training_over()
        if not over and self.after:  # --after names a SLURM training job
            state, _ = slurm_job_state(self.after)
            over = state is None or state not in SLURM_ALIVE
        if not over:
            return False
        self.enqueue()  # the last checkpoint may have landed since the pass
        return self.all_done() and self.runner.running() == 0

    def summary(self) -> str:
        rows = self.rows()
        counts: dict[str, int] = {}
        for r in rows:
            counts[r.status] = counts.get(r.status, 0) + 1
        text = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no jobs"
        bad = [r for r in rows if r.status in ("failed", "blocked")]
        lines = [f"{self.run} suite {self.suite.name} ({self.suite.version}): {text}"]
        lines += [f"  {r.status}: step {r.step} {r.task}{f' shard {r.shard}/{r.shards}' if r.shard else ''}: "
                  f"{(r.error or '').splitlines()[0] if r.error else ''}" for r in bad]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- CLI

def make_scheduler(run_dir: str, suite_name: str, settings: SchedulerSettings, slots: dict | None = None) -> Scheduler:
    """`slots`: a local slot table shared by several schedulers (a pipeline's runs): their jobs together stay
    within --jobs / --devices."""
    run = Path(run_dir)
    if not run.is_dir():
        raise EmotuneError(f"run directory {run_dir} does not exist")
    eval_command = settings.eval_command
    if settings.eval_args:
        import shlex

        eval_command = eval_command + " " + shlex.join(settings.eval_args)
    build_eval_command(eval_command, model="m", task="t", suite="s", out="o", step="0", checkpoint="c",
                       shard="1/2")  # validate
    settings.check()
    suite = resolve_suite(suite_name, list(settings.eval_args))
    if suite.evaluator == HARNESS and settings.eval_command == DEFAULT_EVAL_COMMAND:
        eval_command = harness_eval_command(eval_command)
    store_path = str(Path(settings.store or default_store_path(run)).resolve())
    store = Store(store_path)
    runner = build_runner(settings, store_path, eval_command, run, slots)
    os.environ["EMOTUNE_MAX_ATTEMPTS"] = str(settings.max_attempts)  # the jobs' own retry accounting
    return Scheduler(run, suite, store, runner, settings.lease_ttl, settings.max_attempts, settings.after)


def main(argv: list[str]) -> int:
    ap = ArgumentParser(prog="emotune watch",
                                 description="Evaluate every checkpoint of a run as it lands (each checkpoint x task once).")
    ap.add_argument("run_dir", help="the training run's output_dir (holds checkpoint-STEP/ folders)")
    ap.add_argument("--suite", required=True, help="a suite file of yours (a YAML list of task names / task files) "
                    "or a shipped suite (configs/eval/suites.yaml): " + suites_help())
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="one pass, wait for the local jobs it started, exit")
    mode.add_argument("--follow", action="store_true", help="poll until the run's final checkpoint is evaluated")
    add_scheduler_args(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    sched = make_scheduler(args.run_dir, args.suite, SchedulerSettings.from_args(args))
    signal.signal(signal.SIGTERM, _interrupt)  # kubectl / scancel: stop like Ctrl-C; jobs keep their leases
    try:
        if args.once:
            run_once(sched, args.poll)
        else:
            while True:
                sched.tick()
                if args.follow and sched.finished():
                    break
                time.sleep(args.poll)
    finally:
        print(sched.summary())
    bad = [r for r in sched.rows() if r.status in ("failed", "blocked")]
    return 1 if bad else 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run_once(sched: Scheduler, poll: float = 1.0) -> None:
    """One pass over everything runnable now; local jobs are waited for (a CronJob pod must not exit early)."""
    while True:
        report = sched.tick()
        if report.launched == 0 and sched.runner.running() == 0:
            return
        if sched.runner.detached:  # its jobs run on their own: nothing here to wait for
            return
        time.sleep(min(poll, 1.0))
