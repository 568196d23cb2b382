"""`emotune eval --evaluator lm_eval`: lm-evaluation-harness on one checkpoint, results in our format too.

    emotune eval --evaluator lm_eval --model CKPT --tasks arc_easy,my_task.yaml --out DIR [num_fewshot=0 ...]
    emotune eval --suite harness --model CKPT --out DIR          # a suite whose `evaluator:` is lm_eval

Tasks are harness task names (its registry: tasks, groups, tags) or harness task / group YAML files (its own
format; the file's folder becomes the harness's `include_path`). A group or tag is expanded to its tasks as
the harness reports them; a group that aggregates keeps its aggregate as a result of its own.
Runs `lm_eval.simple_evaluate` with the harness's Hugging Face model (`model="hf"`, `pretrained=CKPT`, our
dtype and device, never the checkpoint's own code) and writes, atomically, in DIR:

- `results.json`: the harness's own results (its schema: `results`, `versions`, `n-shot`, `configs`,
  `higher_is_better`, `n-samples`, `config`, ...; the per-sample logs left out);
- `<task>.samples.jsonl`: the harness's per-sample records (arguments, log-likelihoods, 0/1 scores);
- `summary.json`: our summary (emotune.eval.summary), one TaskResult per task and group, `kind: lm_eval`, its
  metrics named as the harness names them (`acc`, `acc_stderr`, `acc_norm`, ...; a filter other than
  `none` becomes `metric/filter`), so the scheduler stores them like ours.

Everything is checked before the model is loaded: the harness is installed, the options, every task
name is in the registry and every task file builds (its dataset loads); each problem is one line.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError

from emotune.errors import EmotuneError, one_line
from emotune.eval.options import DTYPE_NAMES, Flag, Positive, _Options
from emotune.plumbing import argument_line, key_values
from emotune.tasks.harness import INSTALL_HINT, HarnessTask, harness_task, lm_eval_version

NonNegative = Annotated[int, Field(strict=True, ge=0)]


class HarnessOptions(_Options):
    """`key=value` settings of `emotune eval --evaluator lm_eval`."""

    num_fewshot: NonNegative | None = Field(None, description="demonstrations per prompt (default: the task's own)")
    limit: Positive | None = Field(None, description="only the first N documents of each task")
    batch_size: Positive = Field(8, description="requests per model call")
    dtype: str = Field("auto", description="float32 | bfloat16 | float16 | auto (bf16 on a GPU that has it, else fp32)")
    device: str | None = Field(None, description="cpu | cuda | cuda:1 ... (default cuda if available)")
    bootstrap_iters: NonNegative = Field(100000, description="the harness's bootstrap resamples for the stderr of "
                                         "metrics without a closed form (acc's is closed-form; 0 = no stderrs)")
    progress: Flag = Field(True, description="accepted for the scheduler's command line; the harness draws its "
                           "own progress bars")
    trust_remote_code: Flag = Field(False, description="run the checkpoint's own Python code (only if you trust it)")


def parse_harness_options(items: list[str]) -> dict[str, Any]:
    """`key=value` arguments (values read as YAML scalars) -> validated HarnessOptions, as a dict."""
    values = key_values(items, HarnessOptions.model_fields, " for --evaluator lm_eval")
    try:
        opts = HarnessOptions(**values).model_dump()
    except ValidationError as err:
        raise EmotuneError(argument_line(err, values)) from None
    if str(opts["dtype"]) not in DTYPE_NAMES:
        raise EmotuneError(f"argument dtype={opts['dtype']!r}: must be one of {', '.join(DTYPE_NAMES)}")
    return opts


def require_lm_eval() -> None:
    try:
        spec = importlib.util.find_spec("lm_eval")
    except (ImportError, ValueError):  # a broken or blocked installation
        spec = None
    if spec is None:
        raise EmotuneError(f"--evaluator lm_eval needs lm-evaluation-harness, which is not installed: {INSTALL_HINT}")


def metric_name(key: str) -> str | None:
    """The harness's `acc,none` -> `acc`, `acc_stderr,none` -> `acc_stderr`, `exact_match,strict-match` ->
    `exact_match/strict-match` (and its stderr `exact_match/strict-match_stderr`); None for other keys."""
    metric, sep, filt = key.partition(",")
    if not sep:
        return None  # name, alias, sample_len
    stderr = metric.endswith("_stderr")
    base = metric.removesuffix("_stderr")
    name = base if filt == "none" else f"{base}/{filt}"
    return name + ("_stderr" if stderr else "")


def harness_metrics(task_results: dict[str, Any]) -> dict[str, float]:
    """A task's numeric harness results under our names (`N/A` stderrs are left out)."""
    out = {}
    for key, value in task_results.items():
        name = metric_name(key)
        if name is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def _yaml_texts(roots: list[Path]):
    for root in roots:
        for path in sorted(root.rglob("*.yaml")):
            try:
                yield path, path.read_text(errors="replace")
            except OSError:
                continue


def _folder_names(folders: list[Path]) -> tuple[set[str], dict[str, tuple[Path, list[str]]]]:
    """What the task files' folders define (tasks, groups, tags) and each group's members (group -> its
    file, the names it lists), read with yaml's safe loader (their `!function` as text)."""
    import yaml

    from emotune.tasks.harness import _HarnessYamlLoader

    defined: set[str] = set()
    groups: dict[str, tuple[Path, list[str]]] = {}
    for path, text in _yaml_texts(folders):
        try:
            cfg = yaml.load(text, Loader=_HarnessYamlLoader)  # noqa: S506 - a safe loader
        except yaml.YAMLError:
            continue  # the harness skips it too; a given file's own errors were reported when it was read
        if not isinstance(cfg, dict):
            continue
        tags, task = cfg.get("tag"), cfg.get("task")
        defined |= {v for v in (tags if isinstance(tags, list) else [tags]) if isinstance(v, str)}
        if isinstance(cfg.get("group"), str):
            defined.add(cfg["group"])
            groups.setdefault(cfg["group"], (path, [m for m in (task if isinstance(task, list) else [task])
                                                    if isinstance(m, str)]))
        elif isinstance(task, str):
            defined.add(task)
    return defined, groups


def check_registry_names(tasks: list[HarnessTask]) -> bool:
    """Fail fast on a name the harness cannot know: a given name, or a member of a group they reach, that
    neither the task files' folders define nor any of the harness's own YAML files holds as text (reading
    them takes seconds; the harness's index, parsing them, 15-60 s). Returns whether the registry is needed:
    a name the folders do not define (a registry task, or a registry task a group file lists)."""
    folders = sorted({Path(t.spec).parent for t in tasks if t.text})
    defined, groups = _folder_names(folders)
    wanted: dict[str, Path | None] = {t.name: None for t in tasks}
    todo = [t.name for t in tasks]
    while todo:  # the members of the folders' groups that the given names reach
        path, members = groups.get(todo.pop(), (None, []))
        for m in members:
            if m not in wanted:
                wanted[m] = path
                todo.append(m)
    wanted = {n: g for n, g in wanted.items() if n not in defined}
    if not wanted:
        return False
    root = Path(importlib.util.find_spec("lm_eval").origin).parent / "tasks"  # without importing the harness
    for _, text in _yaml_texts([root]):
        wanted = {n: g for n, g in wanted.items() if n not in text}
        if not wanted:
            return True
    name, group = sorted(wanted.items(), key=lambda kv: (kv[1] is not None, kv[0]))[0]
    if group is None:
        raise EmotuneError(f"unknown harness task {name!r} (not in lm_eval {lm_eval_version()}'s registry)")
    raise EmotuneError(f"{group}: harness group names task {name!r}, which is neither a task file next to it nor "
                       f"in lm_eval {lm_eval_version()}'s registry")


def _task_manager(tasks: list[HarnessTask], registry: bool):
    """The harness's task index: the folders of the task files, plus its registry when a name needs it
    (indexing the registry takes ~20 s, so runs whose names are all in the task files' folders skip it)."""
    from lm_eval.tasks import TaskManager

    folders = sorted({str(Path(t.spec).parent) for t in tasks if t.text})
    return TaskManager(include_path=folders or None, include_defaults=registry)


@dataclass
class Planned:
    """One `--tasks` member as the harness builds it: a task, a group (its tasks, its subgroups and, where
    it defines one, its aggregate) or a tag (its tasks; the harness reports nothing under a tag's name)."""

    given: HarnessTask
    kind: str  # "task" | "group" | "tag"
    item: Any  # what simple_evaluate gets: the Task, the Group (so that it aggregates) or the tag's Tasks
    tasks: list[str]  # the leaf tasks, as the harness names them in its results
    groups: list[str] = field(default_factory=list)  # this group and its subgroups that aggregate

    @property
    def items(self) -> list[Any]:
        return self.item if isinstance(self.item, list) else [self.item]


def _source(t: HarnessTask) -> str:
    return t.spec if t.text else f"harness task {t.name!r}"


def _unknown_member(name: str, manager, path: tuple[str, ...] = ()) -> tuple[str, ...] | None:
    """The first member name of group `name` (or of its groups, recursively) that the harness does not know
    (it would fail on it with a TypeError naming nothing): the chain of groups down to it."""
    entry = manager.task_index.get(name)
    if entry is None:
        return (*path, name)
    members = (entry.cfg or {}).get("task") if entry.kind.name == "GROUP" else None
    for m in members if isinstance(members, list) else [members] if isinstance(members, str) else []:
        if isinstance(m, str) and m not in path:
            found = _unknown_member(m, manager, (*path, name))
            if found:
                return found
    return None


def _plan(t: HarnessTask, manager) -> Planned:
    from lm_eval.tasks._index import Kind

    missing = _unknown_member(t.name, manager)
    if missing:
        raise EmotuneError(f"{_source(t)}: harness group {' > '.join(missing[:-1])} names task {missing[-1]!r}, which "
                           f"is neither a task file next to it nor in lm_eval {lm_eval_version()}'s registry")
    loaded = manager.load([t.name])
    entry = manager.task_index[t.name]
    leaves = list(loaded["tasks"])
    if entry.kind == Kind.GROUP:
        group = loaded["groups"][t.name]
        groups = [g.name for g in [group, *group.get_all_groups()] if g.has_aggregation]
        plan = Planned(t, "group", group, leaves, groups)
    elif entry.kind == Kind.TAG:
        plan = Planned(t, "tag", list(loaded["tasks"].values()), leaves)
    else:
        plan = Planned(t, "task", loaded["tasks"][t.name], leaves)
    if not leaves:
        raise EmotuneError(f"{_source(t)}: harness {plan.kind} {t.name!r} holds no task to evaluate")
    from emotune.tasks.task import NAME_RE

    bad = next((n for n in [*leaves, *plan.groups] if not NAME_RE.fullmatch(n)), None)
    if bad is not None:
        raise EmotuneError(f"{_source(t)}: harness {plan.kind} {t.name!r} holds task {bad!r}, whose name is not "
                           "letters, digits, '.', '_' or '-' (it names an output file)")
    return plan


def build_tasks(tasks: list[HarnessTask], manager) -> list[Planned]:
    """Every task built by the harness (its dataset loaded), groups and tags expanded to their tasks, before
    the model: one line per problem, a task reached twice (`mmlu,mmlu_anatomy`) among them."""
    import datasets

    known = set(manager.all_tasks)
    for t in tasks:
        if t.name not in known:
            where = f"{t.spec}: task {t.name!r} was not registered by the harness (see its log above)" if t.text \
                else f"unknown harness task {t.name!r} (not in lm_eval {lm_eval_version()}'s registry)"
            raise EmotuneError(where)
    plans: list[Planned] = []
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # a bad task's error stays the only line
    try:
        for t in tasks:
            try:
                plans.append(_plan(t, manager))
            except EmotuneError:
                raise
            except Exception as err:  # noqa: BLE001 - the harness raises anything from a bad task config
                raise EmotuneError(f"{_source(t)}: the harness cannot build task {t.name!r}: {type(err).__name__}: "
                                   f"{one_line(err)}") from None
    finally:
        if bars:
            datasets.enable_progress_bars()
    seen: dict[str, str] = {}
    for p in plans:
        for name in [*p.tasks, *p.groups]:
            if name in seen and seen[name] != p.given.name:
                raise EmotuneError(f"harness task {name!r} is in both {seen[name]!r} and {p.given.name!r} (its "
                                   "results would overwrite each other); give it once")
            seen[name] = p.given.name
    return plans


def _json_safe(obj: Any) -> Any:
    import json

    from lm_eval.utils import handle_non_serializable

    return json.loads(json.dumps(obj, default=handle_non_serializable))


def _previous(out_dir: Path, model: str) -> dict[str, Any]:
    """Task results of this model already in DIR/summary.json (kept); another model's are refused."""
    from emotune.eval.summary import TaskResult, read_summary

    path = out_dir / "summary.json"
    if not path.exists():
        return {}
    try:
        old = read_summary(path)
        results = {name: TaskResult(**r) for name, r in old["tasks"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise EmotuneError(f"{path}: not a valid summary; move it away or use another --out") from None
    if old.get("model") != model:
        raise EmotuneError(f"{path}: holds results of another model ({old.get('model')!r}), not of {model!r}; "
                           "use another --out")
    return results


def run_harness(model: str, specs: list[str], out_dir: Path, overrides: list[str], suite: str) -> int:
    """The evaluator behind `emotune eval --evaluator lm_eval` (emotune.eval.cli dispatches here)."""
    opts = parse_harness_options(overrides)
    require_lm_eval()
    tasks = [harness_task(s) for s in specs]
    if not tasks:
        raise EmotuneError("no task given: use --tasks a,b, a harness task YAML file or a harness --suite")
    names = [t.name for t in tasks]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise EmotuneError(f"harness task {dup!r} is given twice (its results would overwrite each other)")
    if out_dir.exists() and not out_dir.is_dir():
        raise EmotuneError(f"--out {out_dir}: exists and is not a folder")
    from emotune.eval.lm import resolve_device, resolve_dtype
    from emotune.hub import resolve

    device = resolve_device(opts["device"])
    dtype = str(resolve_dtype(str(opts["dtype"]), device)).replace("torch.", "")
    resolve(model, "--model", need_tokenizer=True, need_weights=True)
    opts.update(device=device, dtype=dtype)
    previous = _previous(out_dir, model)
    registry = check_registry_names(tasks)
    manager = _task_manager(tasks, registry)
    plans = build_tasks(tasks, manager)

    import lm_eval

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    start = time.time()
    results = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": model, "dtype": dtype, "device": device,
                                "trust_remote_code": opts["trust_remote_code"]},
        tasks=[i for p in plans for i in p.items], task_manager=manager, num_fewshot=opts["num_fewshot"],
        batch_size=opts["batch_size"], limit=opts["limit"], bootstrap_iters=opts["bootstrap_iters"],
        log_samples=True)  # the harness's own default seeds (few-shot sampling)
    seconds = round(time.time() - start, 3)
    write_harness_outputs(out_dir, model, suite, plans, results, opts, seconds, previous)
    return 0


def write_harness_outputs(out_dir: Path, model: str, suite: str, plans: list[Planned], results: dict,
                          opts: dict[str, Any], seconds: float, previous: dict[str, Any]) -> None:
    """One TaskResult per task the harness reports: every leaf task of every member, and every group that
    aggregates (its metrics are the harness's aggregate; no samples file of its own)."""
    from emotune.atomic import write_json, write_jsonl
    from emotune.eval.summary import TaskResult, write_summary

    samples = results.pop("samples", None) or {}
    results = _json_safe(results)
    version = lm_eval_version()
    summary = dict(previous)
    n_results = sum(len(p.tasks) + len(p.groups) for p in plans)
    common = {"evaluator": "lm_eval", "lm_eval_version": version, "limit": opts["limit"],
              "batch_size": opts["batch_size"], "dtype": opts["dtype"], "bootstrap_iters": opts["bootstrap_iters"]}
    done = []
    for p in plans:
        given = p.given.spec if p.given.text else p.given.name
        member = {} if p.kind == "task" else {f"harness_{p.kind}": p.given.name}
        for name in p.tasks:
            res = results["results"][name]
            pred_name = f"{name}.samples.jsonl"
            write_jsonl(out_dir / pred_name, _json_safe(samples.get(name, [])))
            n = results.get("n-samples", {}).get(name, {})
            summary[name] = TaskResult(
                task=name, kind="lm_eval", metrics=harness_metrics(res), n_examples=int(n.get("effective", 0)),
                predictions=pred_name, seconds=seconds / n_results,
                settings={**common, "task_file": given if p.kind == "task" and p.given.text else None, **member,
                          "version": results.get("versions", {}).get(name), "n_shot": results.get("n-shot", {}).get(name),
                          "n_original": n.get("original")})
            done.append(name)
        for name in p.groups:
            res = results["results"][name]
            subtasks = results.get("group_subtasks", {}).get(name, [])
            summary[name] = TaskResult(
                task=name, kind="lm_eval", metrics=harness_metrics(res), n_examples=int(res.get("sample_len") or 0),
                seconds=seconds / n_results,
                settings={**common, "task_file": given if name == p.given.name and p.given.text else None,
                          "harness_group": name, "subtasks": subtasks, "version": results.get("versions", {}).get(name),
                          "n_shot": results.get("n-shot", {}).get(name)})
            done.append(name)
    for name in done:
        line = ", ".join(f"{k}={v:.4f}" for k, v in summary[name].metrics.items())
        print(f"[eval] {name} (lm_eval {version}): {line}", flush=True)
    path = write_summary(out_dir, model, suite, list(summary.values()))
    _add_earlier(results, path, set(done))
    write_json(out_dir / "results.json", results)
    print(f"[eval] summary: {path}; harness results: {out_dir / 'results.json'}")


def _add_earlier(results: dict, summary_path: Path, done: set[str]) -> None:
    """The tasks of the summary that this run did not evaluate, into the harness's results (in its schema),
    so results.json keeps describing the whole folder as summary.json does."""
    from emotune.eval.harness_schema import to_harness_results
    from emotune.eval.summary import read_summary

    earlier = to_harness_results(read_summary(summary_path))
    for key in ("results", "groups", "group_subtasks", "versions", "n-shot", "configs", "higher_is_better",
                "n-samples"):
        for task, value in earlier.get(key, {}).items():
            if task not in done:
                results.setdefault(key, {})[task] = value
