"""Scheduled pairwise judging: when both runs' checkpoints of a step have their instruct outputs, judge
them against each other, once.

A *pair* (pipeline config `pairwise:`, docs/instruct-eval.md) names run A, run B, an instruct task of the
suite, a judge and its format. Each scheduler pass reads both runs' result stores; for every step at
which both hold a finished row of that task (its predictions: the AlpacaEval outputs file), one row is
queued in table `pairwise` of run A's store (emotune.scheduling.pairwise_store), keyed (run A, run B, step, task, judge, format, version):
`version` hashes the suite version, the judge's settings and its command, so changing any judges again. Rows
follow the result store's lease protocol (emotune.scheduling.store): claimed in one `BEGIN IMMEDIATE`
transaction with a fresh token and an expiry, renewed by the job every ttl/4, finished only by the
current token's holder, retried after a killed job's lease runs out, failed after `max_attempts`. So
any number of schedulers on the same stores judge each pair exactly once.

The job (`python -m emotune.scheduling.pairwise job ...`) runs the judge as its own process,
`emotune judge A.json B.json --judge J --judge-format F --out DIR` by default, and records the counts
of DIR/pairwise.json. Like the rest of emotune.scheduling it imports neither torch nor the evaluator.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from emotune.atomic import AppendLog, read_json
from emotune.errors import ArgumentParser, EmotuneError
from emotune.hub import looks_like_path
from emotune.scheduling.pairwise_store import DEFAULT_JUDGE_COMMAND, Pair, PairRow, PairStore
from emotune.scheduling.runners.job import wait_under_lease
from emotune.scheduling.store import Store, default_store_path

RESULT = "pairwise.json"
# what a pairwise row keeps of the judge's result (the per-pair verdicts stay in RESULT)
KEPT = ("win", "tie", "lose", "unparsed", "n", "win_rate", "win_rate_ci", "strict_win_rate", "a", "b", "judge")
__all__ = ["DEFAULT_JUDGE_COMMAND", "Pair", "PairRow", "PairStore", "PairwisePart", "PairwiseScheduler",
           "pairs_from_config", "run_pair_job"]


class PairwisePart(BaseModel):
    """One entry of the pipeline config's `pairwise:` list."""

    model_config = ConfigDict(extra="forbid")
    a: str  # a run name of `runs:` (after matrix expansion) or a run directory
    b: str
    judge: str  # a local causal LM folder or hub id
    format: str = Field("plain", pattern="^(autoj|pandalm|plain)$")
    task: str = "alpaca_eval"  # the instruct task of eval.suite whose outputs are compared
    name: str | None = None  # default "A-vs-B"
    judge_args: list[str] = Field(default_factory=list)  # key=value for `emotune judge` (judge_mode=..., dtype=...)
    judge_command: str | None = None  # replaces DEFAULT_JUDGE_COMMAND ({a} {b} {judge} {format} {out} {python})
    devices: str | None = None  # the judge job's CUDA_VISIBLE_DEVICES ("7", "6,7"); default: the pipeline's


def pairs_from_config(parts: list[PairwisePart], run_dirs: dict[str, Path], suite_version: str, suite_tasks,
                      where: str) -> list[Pair]:
    """The pipeline config's `pairwise:` entries as Pairs: run names resolved, tasks and judges checked."""
    pairs = []
    for i, part in enumerate(parts):
        dirs = []
        for key in ("a", "b"):
            name = getattr(part, key)
            if name in run_dirs:
                dirs.append(str(Path(run_dirs[name]).resolve()))
            elif Path(name).is_dir():
                dirs.append(str(Path(name).resolve()))
            else:
                raise EmotuneError(f"{where}: pairwise.{i}.{key}: {name!r} is neither a run of this pipeline "
                                   f"({', '.join(run_dirs) or 'none'}) nor a run directory")
        if dirs[0] == dirs[1]:
            raise EmotuneError(f"{where}: pairwise.{i}: a and b are the same run")
        if part.task not in suite_tasks:
            raise EmotuneError(f"{where}: pairwise.{i}.task: {part.task!r} is not a task of eval.suite "
                               f"({', '.join(suite_tasks)}); its outputs would never be made")
        if looks_like_path(part.judge) and not Path(part.judge).expanduser().is_dir():  # a hub id is checked by the job
            raise EmotuneError(f"{where}: pairwise.{i}.judge: {part.judge} is not a model folder")
        name = part.name or f"{Path(dirs[0]).name}-vs-{Path(dirs[1]).name}"
        pair = Pair(name, dirs[0], dirs[1], part.task, part.judge, part.format, suite_version,
                    tuple(part.judge_args), part.judge_command or DEFAULT_JUDGE_COMMAND, part.devices)
        same = next((j for j, p in enumerate(pairs) if p.key == pair.key), None)
        if same is not None:  # one row per key: the two entries' names or devices could not both apply
            raise EmotuneError(f"{where}: pairwise.{i} judges the same as pairwise.{same} (runs, task, judge, "
                               "format, judge_args and judge_command all equal); remove one")
        pairs.append(pair)
    return pairs


def finished_outputs(run: str, task: str, suite_version: str) -> dict[int, str]:
    """step -> the outputs file of run's finished `task` rows of this suite version (none: no store yet)."""
    path = default_store_path(run)
    if not path.is_file():
        return {}
    with Store(path, create=False) as store:
        rows = store.rows(run, "finished")
    return {r.step: r.predictions for r in rows
            if r.task == task and r.suite_version == suite_version and r.predictions}


def pair_output_dir(row: PairRow) -> Path:
    """RUN_A/eval/pairwise/<name>/<format>-<hash of the row's key>/step-<step>: one folder per row, so two
    pairs of one name (the default `A-vs-B` for two judges) never write into each other's folder."""
    import hashlib

    from emotune.sbatch import path_component

    digest = hashlib.sha256(json.dumps(list(row.key)).encode()).hexdigest()[:8]
    return (Path(row.run_a) / "eval" / "pairwise" / path_component(row.name, "pair name") / f"{row.format}-{digest}"
            / f"step-{row.step}")


class PairwiseScheduler:
    """Queue, claim and launch the pairs' judge jobs; `tick()` beside the evaluation schedulers."""

    def __init__(self, pairs: list[Pair], ttl: float = 120.0, max_attempts: int = 3, jobs: int = 1):
        self.pairs, self.ttl, self.max_attempts, self.jobs = pairs, ttl, max_attempts, jobs
        self.owner = f"pairwise:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.procs: list[subprocess.Popen] = []

    def _stores(self) -> dict[str, list[Pair]]:
        by: dict[str, list[Pair]] = {}
        for p in self.pairs:
            by.setdefault(str(default_store_path(p.run_a)), []).append(p)
        return by

    def running(self) -> int:
        self.procs = [p for p in self.procs if p.poll() is None]
        return len(self.procs)

    def enqueue(self) -> int:
        """Queue every step at which both runs have finished outputs (a known key is never queued twice)."""
        n = 0
        for path, pairs in self._stores().items():
            if not Path(path).is_file():  # run A has no results yet
                continue
            store = PairStore(path)
            try:
                for p in pairs:
                    a = finished_outputs(p.run_a, p.task, p.suite_version)
                    b = finished_outputs(p.run_b, p.task, p.suite_version)
                    for step in sorted(set(a) & set(b)):
                        n += store.enqueue(p, step, a[step], b[step])
            finally:
                store.close()
        return n

    def tick(self) -> int:
        """Queue what is ready, then launch claimed rows up to `jobs`. Returns how many launched."""
        self.enqueue()
        launched = 0
        for path, pairs in self._stores().items():
            if not Path(path).is_file():
                continue
            store = PairStore(path)
            try:
                free = self.jobs - self.running()
                if free <= 0:
                    continue
                by_key = {p.key: p for p in pairs}  # a row runs with its own pair's command, arguments and GPUs
                claimed = store.claim(self.owner, self.ttl, sorted({p.version for p in pairs}), free,
                                      self.max_attempts, keys=list(by_key))
                for row, token in claimed:
                    p = by_key[row.key]
                    env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": p.devices} if p.devices is not None else {}))
                    self.procs.append(subprocess.Popen(
                        [sys.executable, "-m", "emotune.scheduling.pairwise", "job", "--store", path, "--id",
                         str(row.id), "--token", token, "--ttl", str(self.ttl), "--max-attempts",
                         str(self.max_attempts), "--command", p.command, "--args", json.dumps(list(p.judge_args))],
                        start_new_session=True, env=env))
                    launched += 1
            finally:
                store.close()
        return launched

    def rows(self) -> list[PairRow]:
        out = []
        for path in self._stores():
            if Path(path).is_file():
                store = PairStore(path)
                keys = {p.key for p in self.pairs}
                out += [r for r in store.rows() if r.key in keys]
                store.close()
        return out

    def finished(self, training_over=None) -> bool:
        """No job running and every pair final, after queueing what the last evaluations made ready."""
        self.enqueue()
        return self.running() == 0 and all(r.status in ("finished", "failed") for r in self.rows())

    def summary(self) -> str:
        lines = []
        for r in self.rows():
            res = r.result or {}
            what = (f"win {res.get('win')} tie {res.get('tie')} lose {res.get('lose')} unparsed {res.get('unparsed')}"
                    if r.status == "finished" else (r.error or "").splitlines()[0] if r.error else "")
            lines.append(f"pairwise {r.name} step {r.step} ({r.format}): {r.status} {what}")
        return "\n".join(lines) or "pairwise: nothing judged yet"


def run_pair_job(store_path: str, row_id: int, token: str, ttl: float, max_attempts: int, command: str,
                 extra: list[str]) -> int:
    """Judge one leased pair to the end; exit status 0 = recorded or not ours (see the module docstring)."""
    store = PairStore(store_path)
    owner = f"job:{socket.gethostname()}:{os.getpid()}"
    if not store.start(row_id, token, ttl, owner):
        print("emotune pairwise job: lease no longer current; someone else has it", file=sys.stderr)
        return 0
    row = store.get(row_id)
    out = pair_output_dir(row)
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULT).unlink(missing_ok=True)  # never read a previous attempt's result
    log = AppendLog(out / "attempts.jsonl")  # one line per attempt that ran the judge
    log.write({"pid": os.getpid(), "attempt": row.attempts, "started": time.time()})
    log.close()
    parts = shlex.split(command) + list(extra)
    values = {"python": sys.executable, "a": row.outputs_a, "b": row.outputs_b, "judge": row.judge,
              "format": row.format, "out": str(out)}
    try:
        cmd = [p.format(**values) for p in parts]
    except (KeyError, IndexError, ValueError) as err:
        store.fail(row_id, token, f"judge command {command!r}: bad placeholder {err}", 1)
        return 1
    with open(out / "judge.log", "ab") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)

        def open_renew():
            beat = PairStore(store_path)
            return (lambda: beat.renew(row_id, token, ttl)), beat.close

        rc, lost = wait_under_lease(proc, max(ttl / 4, 0.05), open_renew)
    if lost:
        return 0
    if rc != 0:
        tail = (out / "judge.log").read_text(errors="replace")[-1500:]
        # status 2 is bad input (emotune's one-line error: outputs of the wrong format, different instruction
        # sets, a judge without a tokenizer): trying again cannot help
        store.fail(row_id, token, f"judge exited with status {rc}; end of {out / 'judge.log'}:\n{tail}", max_attempts,
                   retry=rc != 2)
        return 1
    try:
        full = read_json(out / RESULT, "pairwise result")
        result = {k: full[k] for k in KEPT}
    except (EmotuneError, KeyError, TypeError) as err:
        store.fail(row_id, token, f"judge wrote no usable {out / RESULT}: {err!r}", max_attempts)
        return 1
    store.finish(row_id, token, result, str(out))
    return 0


def _main(argv: list[str]) -> int:
    ap = ArgumentParser(prog="python -m emotune.scheduling.pairwise")
    sub = ap.add_subparsers(dest="cmd", required=True)
    job = sub.add_parser("job")
    for name in ("--store", "--token", "--command", "--args"):
        job.add_argument(name, required=True)
    job.add_argument("--id", type=int, required=True)
    job.add_argument("--ttl", type=float, required=True)
    job.add_argument("--max-attempts", type=int, default=3)
    args = ap.parse_args(argv)
    return run_pair_job(args.store, args.id, args.token, args.ttl, args.max_attempts, args.command,
                        json.loads(args.args))


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
