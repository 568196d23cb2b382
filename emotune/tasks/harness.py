"""lm-evaluation-harness tasks and suites as data (yaml only, no torch, no lm_eval import).

A suite run by the harness instead of our evaluator says so:

    # configs/eval/suites.yaml, or a suite file of your own (emotune.tasks.suites reads both)
    harness: {evaluator: lm_eval, tasks: [arc_easy, hellaswag, my_task.yaml]}

Its members are harness task names (the harness's registry: `hellaswag`, `arc_easy`, ...) or harness task
YAML files (the harness's own format: `task`, `dataset_path`, `output_type`, `doc_to_text`, ...), given by
path. The evaluator (emotune.eval.harness) runs them with `lm_eval.simple_evaluate`; the scheduler only
needs what this module reads: each member's task name (how the results are keyed) and the text of its
file (what the suite version hashes).

A harness YAML may hold the harness's `!function module.name` tag; it is read here as plain text (the file
is still read with yaml's safe loader: nothing is constructed or run).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from emotune.atomic import decode_utf8, read_user_yaml
from emotune.errors import EmotuneError
from emotune.tasks.task import NAME_RE, check_name

HARNESS = "lm_eval"  # the `evaluator:` of a harness suite
INSTALL_HINT = "pip install 'emotune[harness]'"


class _HarnessYamlLoader(yaml.SafeLoader):
    """yaml's safe loader that reads the harness's `!function x.y` tag as the string 'x.y'."""


_HarnessYamlLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


@dataclass(frozen=True)
class HarnessTask:
    name: str  # the harness task name: its registry name, or a YAML file's `task:` (a group file's `group:`)
    spec: str  # what the evaluator's --tasks gets: the name, or the YAML file's absolute path
    text: str = ""  # a YAML file's content (hashed into the suite version); "" for a registry name
    group: bool = False  # a group file (its members: task files in its folder, or registry names)
    aggregates: bool = True  # a group file with an `aggregate_metric_list` (the harness reports a result)


def is_task_file(spec: str) -> bool:
    return Path(spec).suffix in (".yaml", ".yml")


def read_harness_task_file(path: str | Path) -> HarnessTask:
    """A harness task YAML (its `task:` name) or group YAML (its `group:` name), the name checked to be one
    directory name (it names the output folder)."""
    path = Path(path)
    cfg = read_user_yaml(path, "harness task file", loader=_HarnessYamlLoader)
    text = decode_utf8(path)  # the task text itself goes into the suite version
    if not isinstance(cfg, dict):
        raise EmotuneError(f"{path}: a harness task file must be a YAML mapping (task, dataset_path, ...)")
    key = "group" if "group" in cfg else "task"  # a group file names its group (its `task:` lists members)
    name = cfg.get(key)
    if key == "task" and isinstance(name, list):
        raise EmotuneError(f"{path}: key 'task' is a list: a harness group file needs key 'group' (its name)")
    if not isinstance(name, str) or not name:
        raise EmotuneError(f"{path}: missing key {key!r} (the harness {key}'s name)")
    if key == "group" and not cfg.get("task"):
        raise EmotuneError(f"{path}: key 'task' (the group's tasks) is missing or empty")
    check_name(name, str(path), key)
    return HarnessTask(name, str(path.resolve()), text, key == "group", bool(cfg.get("aggregate_metric_list")))


def harness_task(spec: str, base: Path | None = None) -> HarnessTask:
    """A suite member: a harness YAML file (relative paths from `base` if the file is there) or a task name."""
    if is_task_file(spec):
        p = Path(spec)
        if not p.is_absolute() and base is not None and (base / p).is_file():
            p = base / p
        return read_harness_task_file(p)
    if not NAME_RE.fullmatch(spec):
        raise EmotuneError(f"harness task {spec!r}: not a task name (letters, digits, '.', '_', '-') or a .yaml file")
    return HarnessTask(spec, spec)


def registry_kinds(names: list[str]) -> dict[str, tuple[str, bool]]:
    return dict(_registry_kinds(tuple(sorted(set(names)))))


@lru_cache(maxsize=8)
def _registry_kinds(names: tuple[str, ...]) -> tuple[tuple[str, tuple[str, bool]], ...]:
    """What the installed harness's registry holds under each name, read from its task YAMLs as text (no
    lm_eval import; one pass, seconds): ("task" | "group" | "tag", whether the harness reports a result
    under the name: a task does, a group only with an `aggregate_metric_list`, a tag never). Names that no
    YAML there defines (or all, where lm_eval is not installed) are left out."""
    import importlib.util
    import re

    try:
        spec = importlib.util.find_spec("lm_eval")
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None or not names:
        return ()
    defines = {n: re.compile(rf"^['\"]?(task|group)['\"]?:\s*['\"]?{re.escape(n)}['\"]?\s*(#.*)?$", re.M) for n in names}
    tag_line = {n: re.compile(rf"^['\"]?tag['\"]?:.*\b{re.escape(n)}\b|^\s*-\s*['\"]?{re.escape(n)}['\"]?\s*$", re.M)
                for n in names}
    found: dict[str, tuple[str, bool]] = {}
    for path in sorted((Path(spec.origin).parent / "tasks").rglob("*.yaml")):
        left = [n for n in names if n not in found]
        if not left:
            break
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for name in (n for n in left if n in text):
            hit = defines[name].search(text)
            if hit:
                found[name] = ("task", True) if hit.group(1) == "task" else \
                    ("group", bool(re.search(r"^['\"]?aggregate_metric_list['\"]?:", text, re.M)))
                continue
            if not tag_line[name].search(text):  # parse only files that may tag it (parsing is the slow part)
                continue
            try:
                tags = (yaml.load(text, Loader=_HarnessYamlLoader) or {}).get("tag")  # noqa: S506 - a safe loader
            except (yaml.YAMLError, AttributeError):
                continue
            if name == tags or (isinstance(tags, list) and name in tags):
                found[name] = ("tag", False)
    return tuple(found.items())


def check_schedulable(tasks: list[HarnessTask], source: str) -> None:
    """A scheduled job's result is the one its evaluator reports under the member's name: a harness tag,
    or a group without an aggregate, has none (its tasks' results only), so it is refused here."""
    kinds = registry_kinds([t.name for t in tasks if not t.text])
    for t in tasks:
        kind, reports = ("group", t.aggregates) if t.group else kinds.get(t.name, ("task", True))
        if not reports:
            what = "a tag" if kind == "tag" else "a group without an aggregate_metric_list"
            raise EmotuneError(f"{source}: harness {kind} {t.name!r} is {what}: the harness reports no result "
                               "under its name, so a scheduled job could record none; list its tasks in the suite "
                               "instead (`emotune eval --evaluator lm_eval --tasks` expands it)")


def harness_suite(entry: dict, source: str, base: Path | None = None) -> list[HarnessTask]:
    """The members of a harness suite entry, each read (task files) and with distinct names."""
    members = entry.get("tasks")
    if not isinstance(members, list) or not members:
        raise EmotuneError(f"{source}: key 'tasks' must be a non-empty list of harness task names or task files")
    tasks = [harness_task(str(m), base) for m in members]
    names = [t.name for t in tasks]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise EmotuneError(f"{source}: harness task {dup!r} appears twice (its results would overwrite each other)")
    return tasks


def lm_eval_version() -> str | None:
    """The installed harness's version (its task definitions change with it), without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        return None
