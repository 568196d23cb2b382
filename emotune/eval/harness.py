"""`emotune eval --evaluator lm_eval`: lm-evaluation-harness on one checkpoint, results in our format too.

    emotune eval --evaluator lm_eval --model CKPT --tasks arc_easy,my_task.yaml --out DIR [num_fewshot=0 ...]
    emotune eval --suite harness --model CKPT --out DIR          # a suite whose `evaluator:` is lm_eval

Tasks are harness task names (its registry) or harness task YAML files (its own format; the file's folder
becomes the harness's `include_path`). Runs `lm_eval.simple_evaluate` with the harness's Hugging Face model
(`model="hf"`, `pretrained=CKPT`, our dtype and device, never the checkpoint's own code) and writes,
atomically, in DIR:

- `results.json`: the harness's own results (its schema: `results`, `versions`, `n-shot`, `configs`,
  `higher_is_better`, `n-samples`, `config`, ...; the per-sample logs left out);
- `<task>.samples.jsonl`: the harness's per-sample records (arguments, log-likelihoods, 0/1 scores);
- `summary.json`: our summary (emotune.eval.summary), one TaskResult per task, `kind: lm_eval`, its
  metrics named as the harness names them (`acc`, `acc_stderr`, `acc_norm`, ...; a filter other than
  `none` becomes `metric/filter`), so the scheduler stores them like ours.

Everything is checked before the model is loaded: the harness is installed, the options, every task
name is in the registry and every task file builds (its dataset loads); each problem is one line.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError

from emotune.errors import EmotuneError, one_line
from emotune.eval.options import DTYPE_NAMES, Flag, Positive, _Options, error_line, key_values
from emotune.harness_tasks import INSTALL_HINT, HarnessTask, harness_task, lm_eval_version

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
        raise EmotuneError(error_line(err, values)) from None
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


def check_registry_names(tasks: list[HarnessTask]) -> None:
    """Fail fast on a task name the harness's registry cannot hold: every registered name (a `task:`,
    `group:` or `tag:` value) is text in one of its YAML files, so a name in none of them is unknown.
    Reading the files as text takes seconds; the harness's own index (parsing them) 15-60 s."""
    wanted = {t.name for t in tasks if not t.text}
    if not wanted:
        return
    root = Path(importlib.util.find_spec("lm_eval").origin).parent / "tasks"  # without importing the harness
    for path in root.rglob("*.yaml"):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        wanted = {n for n in wanted if n not in text}
        if not wanted:
            return
    raise EmotuneError(f"unknown harness task {sorted(wanted)[0]!r} (not in lm_eval {lm_eval_version()}'s registry)")


def _task_manager(tasks: list[HarnessTask]):
    """The harness's task index: the folders of the task files, plus its registry when a name needs it
    (indexing the registry takes ~20 s, so runs of task files alone skip it)."""
    from lm_eval.tasks import TaskManager

    files = [Path(t.spec) for t in tasks if t.text]
    folders = sorted({str(f.parent) for f in files})
    return TaskManager(include_path=folders or None, include_defaults=any(not t.text for t in tasks))


def build_tasks(tasks: list[HarnessTask], manager) -> dict[str, Any]:
    """Every task built by the harness (its dataset loaded), before the model: one line per problem."""
    import datasets

    known = set(manager.all_tasks)
    for t in tasks:
        if t.name not in known:
            where = f"{t.spec}: task {t.name!r} was not registered by the harness (see its log above)" if t.text \
                else f"unknown harness task {t.name!r} (not in lm_eval {lm_eval_version()}'s registry)"
            raise EmotuneError(where)
    built: dict[str, Any] = {}
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # a bad task's error stays the only line
    try:
        for t in tasks:
            try:
                built.update(manager.load([t.name])["tasks"])
            except Exception as err:  # noqa: BLE001 - the harness raises anything from a bad task config
                src = t.spec if t.text else f"harness task {t.name!r}"
                raise EmotuneError(f"{src}: the harness cannot build task {t.name!r}: {type(err).__name__}: "
                                   f"{one_line(err)}") from None
    finally:
        if bars:
            datasets.enable_progress_bars()
    return built


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
    check_registry_names(tasks)
    manager = _task_manager(tasks)
    built = build_tasks(tasks, manager)

    import lm_eval

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    start = time.time()
    results = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": model, "dtype": dtype, "device": device,
                                "trust_remote_code": opts["trust_remote_code"]},
        tasks=list(built.values()), task_manager=manager, num_fewshot=opts["num_fewshot"],
        batch_size=opts["batch_size"], limit=opts["limit"], bootstrap_iters=opts["bootstrap_iters"],
        log_samples=True)  # the harness's own default seeds (few-shot sampling)
    seconds = round(time.time() - start, 3)
    write_harness_outputs(out_dir, model, suite, tasks, results, opts, seconds, previous)
    return 0


def write_harness_outputs(out_dir: Path, model: str, suite: str, tasks: list[HarnessTask], results: dict,
                          opts: dict[str, Any], seconds: float, previous: dict[str, Any]) -> None:
    from emotune.atomic import write_json, write_jsonl
    from emotune.eval.summary import TaskResult, write_summary

    samples = results.pop("samples", None) or {}
    results = _json_safe(results)
    version = lm_eval_version()
    summary = dict(previous)
    for t in tasks:
        res = results["results"][t.name]
        pred_name = f"{t.name}.samples.jsonl"
        write_jsonl(out_dir / pred_name, _json_safe(samples.get(t.name, [])))
        n = results.get("n-samples", {}).get(t.name, {})
        summary[t.name] = TaskResult(
            task=t.name, kind="lm_eval", metrics=harness_metrics(res), n_examples=int(n.get("effective", 0)),
            predictions=pred_name, seconds=seconds / len(tasks),
            settings={"evaluator": "lm_eval", "lm_eval_version": version, "task_file": t.spec if t.text else None,
                      "version": results.get("versions", {}).get(t.name), "n_shot": results.get("n-shot", {}).get(t.name),
                      "n_original": n.get("original"), "limit": opts["limit"], "batch_size": opts["batch_size"],
                      "dtype": opts["dtype"], "bootstrap_iters": opts["bootstrap_iters"]})
        line = ", ".join(f"{k}={v:.4f}" for k, v in summary[t.name].metrics.items())
        print(f"[eval] {t.name} (lm_eval {version}): {line}", flush=True)
    path = write_summary(out_dir, model, suite, list(summary.values()))
    _add_earlier(results, path, {t.name for t in tasks})
    write_json(out_dir / "results.json", results)
    print(f"[eval] summary: {path}; harness results: {out_dir / 'results.json'}")


def _add_earlier(results: dict, summary_path: Path, done: set[str]) -> None:
    """The tasks of the summary that this run did not evaluate, into the harness's results (in its schema),
    so results.json keeps describing the whole folder as summary.json does."""
    from emotune.eval.harness_schema import to_harness_results
    from emotune.eval.summary import read_summary

    earlier = to_harness_results(read_summary(summary_path))
    for key in ("results", "versions", "n-shot", "configs", "higher_is_better", "n-samples"):
        for task, value in earlier.get(key, {}).items():
            if task not in done:
                results.setdefault(key, {})[task] = value
