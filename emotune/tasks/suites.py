"""The one suite resolver: what `--suite NAME` names, for `emotune eval`, the scheduler and the harness.

A suite is either a suite file (your own YAML file, or a shipped one of configs/eval/suites/, by path or
bare name) or a named entry of the shipped configs/eval/suites.yaml; a file wins over a name. Either says:

    - sst2                        # a task name (configs/eval/tasks/sst2.yaml) ...
    - ../tasks/tiny_topic.yaml    # ... or a task file, relative to the suite file
    - {task: mmlu, shards: 8}     # a member split into 8 scheduled jobs (emotune.tasks.shards)

or a mapping `{tasks: [...], shards: N}` (N: every member's default), or `{evaluator: lm_eval, tasks:
[...]}` for a suite that lm-evaluation-harness runs (emotune.tasks.harness). A member's shards: its
suite entry's, else the suite's `shards`, else its task file's, else 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from emotune.atomic import read_user_yaml
from emotune.errors import EmotuneError
from emotune.resources import resolve
from emotune.tasks.files import CONFIG_DIR, load_task
from emotune.tasks.harness import HARNESS, HarnessTask, harness_suite
from emotune.tasks.shards import check_shardable, check_shards
from emotune.tasks.task import Task

EVALUATORS = ("emotune", HARNESS)  # a suite's `evaluator:`
SHIPPED = CONFIG_DIR / "suites.yaml"  # the named suites


@dataclass(frozen=True)
class SuiteSource:
    """A suite as written, its members not read yet."""

    name: str  # a shipped suite's name, or a suite file's stem
    source: str  # what error messages name: the suite file, or "suite NAME"
    entry: Any  # the YAML: a list of members, or a mapping with `tasks`
    base: Path  # relative task files are looked up here first (the suite file's folder)
    evaluator: str  # "emotune" or HARNESS
    file: bool  # a suite file (else an entry of the shipped suites.yaml)


@dataclass(frozen=True)
class Member:
    task: Task
    spec: str  # what the evaluator's --tasks gets: the task's name, or its file's absolute path
    shards: int  # jobs the scheduler splits it into (1: not sharded)


def find_suite(name: str) -> SuiteSource:
    """The suite `name` names: a suite file (the user's, else a shipped one), else a shipped suite name."""
    path = resolve(name, "suite")
    if path.suffix in (".yaml", ".yml") and path.is_file():
        entry, source = read_user_yaml(path, "suite file"), str(path)
        return SuiteSource(path.stem, source, entry, path.parent, suite_evaluator(entry, source), True)
    suites = read_user_yaml(SHIPPED, "suites") or {}
    if name not in suites:
        raise EmotuneError(f"{SHIPPED}: unknown suite {name!r} (known: {', '.join(suites)})")
    entry, source = suites[name], f"suite {name}"
    return SuiteSource(name, source, entry, CONFIG_DIR, suite_evaluator(entry, source), False)


def suite_evaluator(entry: Any, source: str) -> str:
    """Which evaluator a suite entry (a list of tasks, or a mapping with `tasks` [+ `evaluator`]) asks for."""
    if not isinstance(entry, dict):
        return "emotune"
    evaluator = entry.get("evaluator", "emotune")
    if evaluator not in EVALUATORS:
        raise EmotuneError(f"{source}: key 'evaluator' must be one of {', '.join(EVALUATORS)} (got {evaluator!r})")
    return evaluator


def harness_members(suite: SuiteSource) -> list[HarnessTask]:
    """The members of a harness suite (emotune.tasks.harness)."""
    if suite.evaluator != HARNESS:
        raise EmotuneError(f"suite {suite.name!r} is not a harness suite (its evaluator is ours); "
                           "give harness tasks with --tasks")
    return harness_suite(suite.entry, suite.source, suite.base)


def _entries(suite: SuiteSource) -> tuple[list[tuple[str, int | None]], int | None]:
    """A suite's members (a task name / file, or {task: ..., shards: N}) and its suite-wide `shards`."""
    members, default, where = suite.entry, None, suite.source
    if isinstance(members, dict):
        unknown = sorted(set(members) - {"tasks", "shards", "evaluator"})
        if unknown:
            raise EmotuneError(f"{where}: unknown key {unknown[0]!r} (a suite file has 'tasks' and 'shards')")
        if "shards" in members:
            default = check_shards(members["shards"], where)
        members = members.get("tasks")
    if not isinstance(members, list) or not members:
        raise EmotuneError(f"{where}: a suite must be a non-empty list of task names or task file paths")
    entries = []
    for m in members:
        if isinstance(m, dict):
            if "task" not in m or set(m) - {"task", "shards"}:
                raise EmotuneError(f"{where}: entry {m!r}: expected a task name or {{task: NAME, shards: N}}")
            entries.append((str(m["task"]), check_shards(m.get("shards", 1), f"{where}: task {m['task']}")
                            if "shards" in m else None))
        else:
            entries.append((str(m), None))
    return entries, default


def suite_members(suite: SuiteSource) -> list[Member]:
    """Our evaluator's suite: every member's task read, its shards settled and checked, names distinct."""
    if suite.evaluator == HARNESS:
        raise EmotuneError(f"{suite.source}: suite {suite.name!r} is run by lm-evaluation-harness (evaluator: "
                           f"lm_eval), not by our evaluator: emotune eval --suite {suite.name} ... or --evaluator lm_eval")
    entries, default = _entries(suite)
    members = []
    for spec, shards in entries:
        p = Path(spec)
        if p.suffix in (".yaml", ".yml") and not p.is_absolute() and (suite.base / p).is_file():
            spec = str((suite.base / p).resolve())
        task = load_task(spec)
        if Path(spec).suffix in (".yaml", ".yml"):  # the file read, wherever the job runs from
            spec = str(Path(task.source).resolve())
        # the most specific wins: the suite entry, the suite's `shards`, the task file's, else 1
        n = shards if shards is not None else default if default is not None else task.shards
        check_shardable(task.kind, n, f"suite {suite.name}: task {task.name}")
        members.append(Member(task, spec, n))
    names = [m.task.name for m in members]
    if len(set(names)) != len(names):
        raise EmotuneError(f"suite {suite.name}: a task name appears twice ({names})")
    return members


def load_suite(name: str) -> list[Task]:
    """The tasks of our evaluator's suite `name` (a suite file or a shipped suite)."""
    return [m.task for m in suite_members(find_suite(name))]


def _shipped() -> dict[str, Any]:
    """The shipped configs/eval/suites.yaml: name -> entry, in its order (empty where unreadable)."""
    try:
        suites = yaml.safe_load(SHIPPED.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return {str(k): v for k, v in suites.items()} if isinstance(suites, dict) else {}


def shipped_suites() -> list[str]:
    """Every suite name in the shipped configs/eval/suites.yaml, in its order (for --help)."""
    return list(_shipped())


def suites_help() -> str:
    """`icl (7 tasks), mmlu (1 task), ..., harness (lm_eval: 6 tasks)`: the shipped suites, for --suite's help."""
    out = []
    for name, entry in _shipped().items():
        tasks = entry.get("tasks", []) if isinstance(entry, dict) else entry if isinstance(entry, list) else []
        harness = isinstance(entry, dict) and entry.get("evaluator") == HARNESS
        n = f"{len(tasks)} task{'s' if len(tasks) != 1 else ''}"
        out.append(f"{name} ({'lm_eval: ' if harness else ''}{n})")
    return ", ".join(out)
