"""`emotune pipeline CONFIG [key=value...]`: train, evaluate every checkpoint as it lands, write the report.

    train:
      config: configs/train/tiny-cpu.yaml          # the training run's config
      overrides: [max_steps=20]                    # its key=value overrides (`train.overrides=[...]` on the
                                                   # command line merges into them per key; `=[]` empties)
      command: null                                # default: this Python's `emotune train`; e.g.
                                                   # [deepspeed, --num_gpus, 8, --module, emotune.train.recipe]
    run_dir: runs/pipeline-tiny                    # the training output_dir (overrides the train config's)
    eval:
      suite: configs/eval/suites/tiny_suite.yaml      # suite name or suite file
      runner: local                                # local | slurm
      devices: null                                # local: "4,5,6,7" = one eval job per GPU beside training
      jobs: 1                                      # local without devices: evaluations at once
      eval_args: []                                # key=value settings for `emotune eval` (limit=200 ...)
      poll: 10                                     # seconds between scheduler passes
      lease_ttl: 120
      max_attempts: 3
      sbatch_args: []                              # slurm: #SBATCH lines for eval jobs
    report:
      out: null                                    # default RUN_DIR/report
      title: emotune report
      intro: ""                                    # a paragraph under the title
      headline: []                                 # task/metric the report leads with (default: all)
    pairwise:                                      # instruct suites: judge two runs' responses per step
      - {a: emo, b: mle, judge: /models/autoj-13b, format: autoj}   # docs/instruct-eval.md

Several runs in one config (the embedded demo: pre-train, then fine-tune with each objective and seed):

    prepare: [[emotune, synth, runs/demo/data]]      # commands run first, in order
    runs:                                            # instead of `train`; each in RUN_DIR/<name>
      - name: pretrain
        train: {config: configs/train/demo-pretrain.yaml}
        evaluate: false                              # trained, not evaluated or reported
      - name: "{objective.name}-seed{seed}"          # one run per combination of the matrix
        matrix: {objective.name: [mle, emo], seed: [0, 1, 2]}
        train: {config: configs/train/demo-finetune.yaml, overrides: ["model.name_or_path={run:pretrain}"]}

`{run:NAME}` is the last complete checkpoint of an earlier run. Runs train one after another; the
scheduler evaluates every finished checkpoint of every run meanwhile; one report compares them all.

Training runs as its own process(es) (`emotune train`, or the launcher you give), never hosting an
evaluation; this process is the scheduler beside it: each pass finds new complete checkpoints and starts
evaluation jobs (separate processes, leased in RUN_DIR/eval/results.sqlite). When training exits, the
remaining jobs are drained and the report is written. Exit status: training's if it failed, 1 if an
evaluation failed for good, else 0.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from emotune.errors import ArgumentParser, EmotuneError
from emotune.launch.pipeline_train import fill_run_refs, resolve_command, train_beside
from emotune.plumbing import apply_overrides, config_line, parse_override
from emotune.scheduling.pairwise import PairwisePart
from emotune.scheduling.runners.base import DEFAULT_EVAL_COMMAND
from emotune.scheduling.settings import SchedulerSettings

log = logging.getLogger("emotune.pipeline")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainPart(_Strict):
    config: str
    overrides: list[str] = Field(default_factory=list)
    command: list[str] | None = Field(None, min_length=1)


class EvalPart(_Strict):
    suite: str
    runner: str = Field("local", pattern="^(local|slurm)$")
    devices: str | None = None
    jobs: int = Field(1, ge=1)
    eval_args: list[str] = Field(default_factory=list)
    eval_command: str | None = None
    poll: float = Field(10.0, gt=0)
    lease_ttl: float = Field(120.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    sbatch_args: list[str] = Field(default_factory=list)
    setup: list[str] = Field(default_factory=list)


class ReportPart(_Strict):
    out: str | None = None
    enabled: bool = True
    title: str = "emotune report"
    intro: str = ""  # what the runs demonstrate, under the title
    headline: list[str] = Field(default_factory=list)  # task/metric items the report leads with

    @field_validator("headline")
    @classmethod
    def _directed(cls, items):  # checked before training, not when the report is written after it
        from emotune.report.data import METRICS

        for item in items:
            if item.rpartition("/")[2] not in METRICS:
                raise ValueError(f"{item!r}: not a metric with a direction (one of {', '.join(sorted(METRICS))})")
        return items


class RunPart(_Strict):
    name: str
    train: TrainPart
    evaluate: bool = True
    matrix: dict[str, list[Any]] = Field(default_factory=dict)


class PipelineConfig(_Strict):
    train: TrainPart | None = None
    runs: list[RunPart] = Field(default_factory=list)
    prepare: list[Annotated[list[str], Field(min_length=1)]] = Field(default_factory=list)
    run_dir: str | None = None
    eval: EvalPart
    report: ReportPart = Field(default_factory=ReportPart)
    pairwise: list[PairwisePart] = Field(default_factory=list)  # judged pairs of runs (instruct suites)

    @model_validator(mode="after")
    def _one_form(self):
        if (self.train is None) == (not self.runs):
            raise ValueError("give either train (one run) or runs (several)")
        if self.runs and not self.run_dir:
            raise ValueError("runs need run_dir (each run trains into RUN_DIR/<name>)")
        return self


@dataclass
class Run:
    name: str
    train: TrainPart
    evaluate: bool
    run_dir: Path | None  # None: the train config's output_dir


def expand_runs(cfg: PipelineConfig) -> list[Run]:
    """The runs in training order, matrices expanded (names filled from each combination)."""
    if cfg.train is not None:
        return [Run("run", cfg.train, True, Path(cfg.run_dir) if cfg.run_dir else None)]
    runs: list[Run] = []
    for part in cfg.runs:
        keys = list(part.matrix)
        for combo in itertools.product(*(part.matrix[k] for k in keys)):
            name = part.name
            for k, v in zip(keys, combo):
                name = name.replace("{" + k + "}", str(v))
            extra = [f"{k}={v}" for k, v in zip(keys, combo)]
            train = part.train.model_copy(update={"overrides": [*part.train.overrides, *extra]})
            runs.append(Run(name, train, part.evaluate, Path(cfg.run_dir) / name))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise EmotuneError(f"pipeline runs: two runs are named alike ({names}); put the matrix keys in the name")
    return runs


# Lists of key=value settings: a command-line override of one merges into it per key (OVERRIDE_LISTS_HELP).
OVERRIDE_LISTS = (("train", "overrides"), ("eval", "eval_args"), ("runs", None, "train", "overrides"))
OVERRIDE_LISTS_HELP = ("train.overrides, eval.eval_args and runs.N.train.overrides hold key=value settings: "
                       "`train.overrides=[objective.name=mle]` merges into the config's list (an item replaces "
                       "the item of the same key, a new key is added); `train.overrides=[]` empties it; any other "
                       "list (report.headline, eval.sbatch_args ...) is replaced")


def _is_override_list(path: list[str]) -> bool:
    return any(len(path) == len(p) and all(want is None and part.isdigit() or part == want
                                           for part, want in zip(path, p)) for p in OVERRIDE_LISTS)


def merge_settings(current: list[str], new: Any, item: str) -> list[str]:
    """`current` with each key=value of `new` in place of the same key's item (or added); [] empties it."""
    new = new if isinstance(new, list) else [new]
    if not new:
        return []
    out = list(current)
    for setting in new:
        if not isinstance(setting, str) or "=" not in setting or setting.startswith("="):
            raise EmotuneError(f"override {item!r}: {setting!r} is not key=value ({OVERRIDE_LISTS_HELP})")
        key = setting.split("=", 1)[0].strip()
        out = [s for s in out if not (isinstance(s, str) and s.split("=", 1)[0].strip() == key)] + [setting]
    return out


def apply_pipeline_overrides(data: dict, overrides: list[str]) -> dict:
    """`key=value` overrides in order, as for training, except that a key=value list merges (OVERRIDE_LISTS)."""
    for item in overrides:
        path, value = parse_override(item)
        if not _is_override_list(path):
            data = apply_overrides(data, [item])
            continue
        node: Any = data
        for part in path[:-1]:
            node = node[int(part)] if isinstance(node, list) and part.isdigit() and int(part) < len(node) else \
                node.get(part) if isinstance(node, dict) else None
            if node is None:
                raise EmotuneError(f"override {item!r}: the config has no {'.'.join(path[:-1])}")
        current = node.get(path[-1]) or []
        node[path[-1]] = merge_settings(current if isinstance(current, list) else [current], value, item)
    return data


def load_pipeline_config(path: str, overrides: list[str]) -> PipelineConfig:
    from emotune.train.config import read_yaml

    data = apply_pipeline_overrides(read_yaml(path, kind="pipeline"), overrides)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as err:
        raise EmotuneError(config_line(err, path)) from None


def scheduler_settings(ev: EvalPart) -> SchedulerSettings:
    """The `eval:` section as the scheduler's settings."""
    return SchedulerSettings(runner=ev.runner, eval_command=ev.eval_command or DEFAULT_EVAL_COMMAND,
                             eval_args=tuple(ev.eval_args), devices=ev.devices, jobs=ev.jobs if not ev.devices else 0,
                             lease_ttl=ev.lease_ttl, poll=ev.poll, max_attempts=ev.max_attempts,
                             sbatch_args=tuple(ev.sbatch_args), setup=tuple(ev.setup))


def keys_help() -> str:
    """What a pipeline config accepts (every key, sections with theirs) and the shipped ones, for --help."""
    from emotune.resources import names
    from emotune.tasks.suites import suites_help

    parts = []
    for name, field in PipelineConfig.model_fields.items():
        sub = next((t for t in (field.annotation, *getattr(field.annotation, "__args__", ()))
                    if isinstance(t, type) and issubclass(t, BaseModel)), None)
        index = ".N" if getattr(field.annotation, "__origin__", None) is list else ""  # runs.1.train.config=...
        parts.append(f"{name}{index}.{{{', '.join(sub.model_fields)}}}" if sub else name)
    shipped = names("pipeline")
    return (f"config keys (YAML, or key=value overrides, dotted for sections): {'; '.join(parts)}\n\n"
            f"{OVERRIDE_LISTS_HELP}\n\neval.suite: a suite file of yours (a YAML list of tasks) or a shipped suite: "
            f"{suites_help()}\n\nshipped configs (configs/pipelines/NAME.yaml): {', '.join(shipped)}")


def help_epilog() -> str:
    import textwrap

    return "\n\n".join(textwrap.fill(t, 100, break_on_hyphens=False) for t in keys_help().split("\n\n"))


def main(argv: list[str]) -> int:
    # One screen on purpose: validate everything, prepare, train each run beside the scheduler, drain,
    # report; the order (and the exit status rule) is the whole command.
    ap = ArgumentParser(prog="emotune pipeline", description="Train, evaluate each checkpoint as it "
                        "lands, and write the report — one command.", formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog=help_epilog())
    ap.add_argument("config", help="pipeline config (YAML), e.g. configs/pipelines/tiny.yaml")
    ap.add_argument("overrides", nargs="*", help="key=value overrides (run_dir=..., eval.jobs=2, ...; lists: below)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    cfg = load_pipeline_config(args.config, args.overrides)

    from emotune.report.build import ReportOptions, make_report
    from emotune.scheduling.scheduler import make_scheduler
    from emotune.train.config import load_config

    try:  # name the pipeline file: these settings come from it
        runs = expand_runs(cfg)
        settings = scheduler_settings(cfg.eval)
        settings.check()
    except EmotuneError as err:
        raise EmotuneError(f"{args.config}: {err}") from None
    pairs = make_pairwise(cfg, runs, args.config)
    for run in runs:  # fail early, before anything runs ({run:...} references are filled later)
        overrides = [o for o in run.train.overrides if "{run:" not in o]
        load_config(run.train.config, overrides + ([f"output_dir={run.run_dir}"] if run.run_dir else []))
    for command in cfg.prepare:
        log.info("prepare: %s", " ".join(command))
        if subprocess.run(resolve_command(command)).returncode != 0:
            raise EmotuneError(f"pipeline prepare step {' '.join(command)!r} failed")

    schedulers, done, failed = [], {}, None
    slots: dict = {}  # one local slot table for every run's scheduler: eval.jobs / eval.devices hold for the pipeline
    for run in runs:
        overrides = fill_run_refs(list(run.train.overrides), done)
        if run.run_dir is not None:
            overrides.append(f"output_dir={run.run_dir}")
        run_dir = Path(load_config(run.train.config, overrides).output_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if run.evaluate:
            schedulers.append(make_scheduler(str(run_dir), cfg.eval.suite, settings, slots))
        command = [*resolve_command(run.train.command or ["emotune", "train"]), run.train.config, *overrides]
        log.info("training %s: %s", run.name, " ".join(command))
        status = train_beside(command, schedulers + pairs, cfg.eval.poll)
        done[run.name] = run_dir
        if status != 0:
            failed = (" ".join(command), status)
            break
    log.info("training finished; evaluating the remaining checkpoints")
    while True:  # drain: every checkpoint the runs wrote, each task, to a terminal state
        for sched in schedulers + pairs:
            sched.tick()
        if all(sched.finished(training_over=lambda: True) for sched in schedulers + pairs):
            break
        time.sleep(min(cfg.eval.poll, 2.0))

    for sched in schedulers + pairs:
        print(sched.summary())
    evaluated = [s for s in schedulers if s.rows()]
    if cfg.report.enabled and evaluated:
        first = Path(cfg.run_dir) if cfg.runs else evaluated[0].run_dir
        out = cfg.report.out or str(first / "report")
        options = ReportOptions(cfg.report.title, cfg.report.intro, list(cfg.report.headline))
        written = make_report([str(s.run_dir) for s in evaluated], out, options=options)
        print(Path(written["markdown"]).read_text())
        print(f"emotune pipeline: report {written['html']}")
    if failed:
        raise EmotuneError(f"training ({failed[0]}) exited with status {failed[1]}; the checkpoints it wrote were evaluated")
    return 1 if any(r.status in ("failed", "blocked") for s in schedulers for r in s.rows()) else 0


def make_pairwise(cfg: PipelineConfig, runs: list[Run], where: str) -> list:
    """The `pairwise:` section's scheduler (a list of zero or one), checked before anything runs."""
    if not cfg.pairwise:
        return []
    from emotune.scheduling.pairwise import PairwiseScheduler, pairs_from_config
    from emotune.scheduling.scheduler import resolve_suite

    suite = resolve_suite(cfg.eval.suite, cfg.eval.eval_args)  # the version the evaluation rows carry
    dirs = {r.name: r.run_dir for r in runs if r.run_dir is not None and r.evaluate}
    pairs = pairs_from_config(cfg.pairwise, dirs, suite.version, suite.labels, where)
    return [PairwiseScheduler(pairs, cfg.eval.lease_ttl, cfg.eval.max_attempts)]
