"""What `emotune report` reads: each run's result store, training log, config and best checkpoint,
and what it knows about metrics (which way is better, how to label them) and objectives (names, colours).

No plotting and no HTML here (emotune.report.plots, .tables, .build).
"""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from emotune.atomic import read_jsonl
from emotune.errors import EmotuneError
from emotune.report.results import MAIN_METRICS, main_metric, nothing_to_show
from emotune.scheduling.discovery import read_best, read_run_config
from emotune.scheduling.store import Store, default_store_path

log = logging.getLogger("emotune.report")

# The paper's names and column order (Table 3); other tasks follow in name order.
TASK_NAMES = {"tweet_eval": "TE", "sst2": "SST-2", "trec": "TREC", "subj": "Subj", "cr": "CR",
              "rotten_tomatoes": "RT", "ag_news": "AG", "mmlu": "MMLU"}
OBJECTIVE_NAMES = {"mle": "MLE", "tailr": "TaiLr", "mixce": "MixCE", "emo": "EMO", "kd_forward": "KD (forward KL)",
                   "kd_reverse": "KD (reverse KL)"}
# One colour per objective, the same in every plot (matplotlib's tab10: MLE blue, EMO red ...).
OBJECTIVE_COLORS = {"mle": "#1f77b4", "tailr": "#2ca02c", "mixce": "#9467bd", "emo": "#d62728"}
OTHER_COLORS = ("#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")

# Metrics with a direction: (display name, higher is better, shown in percent). Only these are plotted
# and pooled; counts, fractions and spreads (`samples_ended`, `mauve_std`, `*_stderr`) are not scores.
METRICS: dict[str, tuple[str, bool, bool]] = {
    "accuracy": ("accuracy", True, True), "acc": ("accuracy", True, True), "acc_norm": ("acc_norm", True, True),
    "accuracy_macro": ("macro accuracy (OpenCompass mmlu)", True, True), "exact_match": ("exact match", True, True),
    "mauve": ("MAUVE", True, False),
    "ppl_oracle": ("PPL_oracle", False, False), "ppl_test": ("PPL_test", False, False), "ppl": ("PPL", False, False),
    "forward_ce": ("forward CE", False, False), "reverse_ce": ("reverse CE", False, False),
    "win_rate": ("win rate", True, True),
}
# Headline order when a report does not choose: the paper's open-ended generation metrics first.
METRIC_ORDER = ("mauve", "ppl_oracle", "ppl_test", "forward_ce", "reverse_ce", "win_rate", "accuracy", "acc",
                "acc_norm", "accuracy_macro", "exact_match", "ppl")
STDERR_SUFFIX = "_stderr"  # `acc_stderr` beside `acc`: the evaluator's standard error of that metric


def metric_label(key: str, unit: bool = True) -> str:
    """`MAUVE (↑ higher is better)`; accuracies are shown in percent."""
    name, higher, pct = METRICS[key]
    return f"{name}{' (%)' if pct and unit else ''} {'↑ higher' if higher else '↓ lower'} is better"


def metric_scale(key: str) -> float:
    return 100.0 if METRICS[key][2] else 1.0


@dataclass
class RunData:
    path: Path
    label: str
    objective: str | None
    # task -> step -> (main metric, tokens_seen)
    scores: dict[str, dict[int, tuple[float, int | None]]] = field(default_factory=dict)
    tokens: dict[int, int | None] = field(default_factory=dict)
    train: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # task -> step -> every metric of that evaluation (oracle metrics, perplexities, stderrs ...)
    metrics: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    best: dict | None = None  # the run's best checkpoint (best.json), marked in the tables and plots

    @property
    def group(self) -> str:
        """The objective's display name: runs of one objective (seeds) are pooled under it."""
        return OBJECTIVE_NAMES.get(self.objective or "", self.objective or self.path.name)

    def tasks(self) -> list[str]:
        return list(self.scores)

    def complete_steps(self, tasks: list[str]) -> list[int]:
        """Steps at which every task of `tasks` has a finished result."""
        return sorted(s for s in set(self.tokens) if all(s in self.scores.get(t, {}) for t in tasks))

    def series(self, task: str, key: str) -> list[tuple[int, int | None, float, float | None]]:
        """(step, tokens seen, value, standard error or None) of one metric, by step."""
        out = []
        for step, m in sorted(self.metrics.get(task, {}).items()):
            v = m.get(key)
            if is_number(v):
                se = m.get(key + STDERR_SUFFIX)
                out.append((step, self.tokens.get(step), float(v), float(se) if is_number(se) else None))
        return out

    def last(self, task: str, key: str) -> float | None:
        s = self.series(task, key)
        return s[-1][2] if s else None

    def selected_step(self, task: str) -> int | None:
        """The checkpoint the report compares runs at: the run's best (lowest validation loss, best.json: the
        paper's selection) when it was evaluated on `task`, else the last one evaluated."""
        steps = self.metrics.get(task)
        if not steps:
            return None
        best = self.best.get("step") if self.best else None
        return best if best in steps else max(steps)

    def selected(self, task: str, key: str) -> float | None:
        """`key` of `task` at `selected_step` (None where that evaluation lacks it)."""
        step = self.selected_step(task)
        v = self.metrics[task][step].get(key) if step is not None else None
        return float(v) if is_number(v) else None


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def task_order(tasks) -> list[str]:
    known = [t for t in TASK_NAMES if t in tasks]
    return known + sorted(t for t in tasks if t not in TASK_NAMES)


def task_name(task: str) -> str:
    return TASK_NAMES.get(task, task)


def directed_metrics(runs: list[RunData], tasks: list[str] | None = None) -> list[tuple[str, str]]:
    """Every (task, metric) with a direction that some run has, tasks in report order, metrics in METRIC_ORDER."""
    have = {(t, k) for r in runs for t, by_step in r.metrics.items() for m in by_step.values() for k in m
            if k in METRICS and is_number(m[k])}
    order = tasks if tasks is not None else task_order({t for t, _ in have})
    return [(t, k) for t in order for k in METRIC_ORDER if (t, k) in have]


def groups(runs: list[RunData]) -> dict[str, list[RunData]]:
    """Runs pooled by objective, MLE, TaiLr, MixCE, EMO first."""
    out: dict[str, list[RunData]] = {}
    for r in sorted(runs, key=objective_rank):
        out.setdefault(r.group, []).append(r)
    return out


def objective_rank(r: RunData) -> tuple:
    order = list(OBJECTIVE_NAMES)
    return (order.index(r.objective) if r.objective in order else len(order), r.group, r.label)


def group_colors(runs: list[RunData]) -> dict[str, str]:
    """Objective display name -> colour: fixed for the paper's objectives, the rest in order."""
    out, spare = {}, list(OTHER_COLORS)
    for name, members in groups(runs).items():
        obj = members[0].objective
        out[name] = OBJECTIVE_COLORS.get(obj or "") or (spare.pop(0) if spare else "#444444")
    return out


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value)."""
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def read_train_log(path: Path) -> tuple[list[dict], list[dict]]:
    train, evals = [], []
    if not path.is_file():
        return train, evals
    # a torn last line: the log of a run still writing (or killed mid-write) is read up to it
    for rec in read_jsonl(path, on_bad_line=lambda i, _: log.warning("%s line %d: not a JSON record, skipped", path, i)):
        if "step" not in rec:
            continue
        (train if "loss" in rec else evals if "eval_ce" in rec else []).append(rec)
    return train, evals


def run_objective(run_dir: Path) -> str | None:
    """The objective the run trained with, from the config.yaml the training stage wrote (YAML)."""
    cfg = read_run_config(run_dir)
    if cfg is None:
        return None
    name = (cfg.get("objective") or {}).get("name") if isinstance(cfg.get("objective"), dict) else None
    if not isinstance(name, str):
        raise EmotuneError(f"run config {run_dir / 'config.yaml'}: objective.name is missing or not a string")
    return name


def load_run(run_dir: str, store_path: str | None, suite: str | None) -> RunData:
    path = Path(run_dir).resolve()
    if not path.is_dir():
        raise EmotuneError(f"run directory {run_dir} does not exist")
    spath = Path(store_path) if store_path else default_store_path(path)
    rows = []
    if spath.is_file():
        with Store(spath, create=False) as store:
            rows = store.rows(str(path), suite=suite)
    train, evals = read_train_log(path / "train_log.jsonl")
    if not rows:  # nothing to show: one line; only training curves: said on stderr, the report goes on
        err = nothing_to_show(run_dir, spath, suite, spath.is_file())
        if not train:
            raise EmotuneError(f"{err} (and no training log, train_log.jsonl)")
        log.warning("%s; the report shows %s's training curves only", err, run_dir)
    objective = next((r.objective for r in rows if r.objective), None) or run_objective(path)
    data = RunData(path, "", objective, train=train, evals=evals, best=read_best(path))
    latest: dict[tuple[str, int], object] = {}
    for r in rows:  # the newest row per (task, step) — a re-exported step or a new suite version wins
        if r.status == "finished" and ((r.task, r.step) not in latest or r.created_at >= latest[(r.task, r.step)].created_at):
            latest[(r.task, r.step)] = r
        if r.status in ("failed", "blocked"):
            data.problems.append(f"step {r.step} {r.task}: {r.status}: {(r.error or '').strip().splitlines()[0] if r.error else ''}")
    for (task, step), r in sorted(latest.items()):
        data.metrics.setdefault(task, {})[step] = dict(r.metrics or {})
        v = main_metric(r.metrics)
        if v is not None and any(k in (r.metrics or {}) for k in MAIN_METRICS):  # a 0..1 score (accuracy, MAUVE)
            data.scores.setdefault(task, {})[step] = (v, r.tokens_seen)
        data.tokens[step] = r.tokens_seen  # from the checkpoint's manifest, recorded when the job was queued
    _tokens_from_train_log(data)
    return data


def _tokens_from_train_log(data: RunData) -> None:
    """Tokens seen at a step whose manifest had none: the training log's record of that step."""
    logged = {rec["step"]: rec["tokens_seen"] for rec in data.train if is_number(rec.get("tokens_seen"))}
    for step, tok in data.tokens.items():
        if tok is None and step in logged:
            data.tokens[step] = int(logged[step])


def label_runs(runs: list[RunData]) -> None:
    """A run's label is its objective, plus its folder name where several runs share one (seeds)."""
    base = [r.group for r in runs]
    for r, b in zip(runs, base):
        r.label = b if base.count(b) == 1 else f"{b} ({r.path.name})"
