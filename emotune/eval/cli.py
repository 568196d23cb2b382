"""`emotune eval`: evaluate one Hugging Face checkpoint on a suite of tasks.

    emotune eval --model PATH --suite icl|mmlu|paper --out DIR [key=value ...]
    emotune eval --model PATH --tasks sst2,trec,my_task.yaml --out DIR [key=value ...]
    emotune eval my_task.yaml --model PATH --out DIR [key=value ...]
    emotune eval --evaluator lm_eval --model PATH --tasks arc_easy,harness_task.yaml --out DIR [num_fewshot=0 ...]
    emotune eval --suite instruct --model PATH --against OTHER --judge JUDGE --judge-format F --out DIR

`--against` (instruction-following suites, docs/instruct-eval.md): another checkpoint, an outputs file
in AlpacaEval's format, or `reference` (the set's reference responses); the judge compares the two
sides' responses in both orders and the win / tie / lose table is printed.

Task files, options and key=value settings mix in any order. Writes `DIR/<task>.predictions.jsonl` per
task and `DIR/summary.json` (emotune.eval.summary) after every task, so an interrupted run resumes where it
stopped: a finished task is not redone when it was made with the same settings (emotune.eval.resume), and
a run with other settings is refused rather than mixed with it. `--evaluator lm_eval` (or a suite whose
`evaluator:` is lm_eval) runs lm-evaluation-harness instead (emotune.eval.harness).

Every task it finishes is also recorded in a result store, the one the scheduler fills (`emotune eval` as a
command: emotune.launch.eval_cmd, emotune.scheduling.record): that of the run whose checkpoint `--model` is
(`emotune results RUN`, `emotune report RUN`), else `DIR/eval/results.sqlite` (`emotune results DIR`), or
`--store PATH`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from emotune.errors import ArgumentParser, EmotuneError
from emotune.eval.kinds import count_rows, run_task
from emotune.eval.options import help_text, parse_overrides
from emotune.eval.resume import check_reusable, model_fingerprint, result_key
from emotune.eval.summary import TaskResult, read_summary, write_json_atomic, write_summary
from emotune.eval.task_data import check_task_data
from emotune.tasks.files import load_task
from emotune.tasks.harness import HARNESS
from emotune.tasks.registry import KINDS
from emotune.tasks.shards import check_shardable, parse_shard, shard_range
from emotune.tasks.suites import EVALUATORS, find_suite, harness_members, suite_members, suites_help
from emotune.tasks.task import Task


def make_retriever(opts: dict[str, Any], tokenizer):
    from emotune.eval.icl.retriever import TopkRetriever

    cache = opts["cache_dir"] or Path(os.environ.get("EMOTUNE_CACHE", Path.home() / ".cache" / "emotune")) / "retriever"
    # roundtrip_tokenizer "model" binds to the evaluated model's tokenizer in run_icl_task (for_model)
    return TopkRetriever(opts["encoder"], batch_size=opts["retriever_batch_size"], cache_dir=cache,
                         roundtrip_tokenizer=opts["roundtrip_tokenizer"], device=opts["device"])


def check_shard_rows(task: Task, opts: dict[str, Any]) -> None:
    """shard=K/N with more shards than the task has test rows (after `limit`): one line, before the model."""
    n_rows = count_rows(task, opts["data_dir"], opts["limit"])
    k, n = parse_shard(opts["shard"])
    shard_range(n_rows, k, n, f"{task.source}: shard")


def _arguments(argv: list[str]):
    """(parsed arguments, task files among the positional arguments), or None after --help."""
    ap = ArgumentParser(prog="emotune eval", description=__doc__.splitlines()[0], epilog=help_text(),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="Hugging Face checkpoint folder or hub id")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--suite", help="a suite file, or a suite of the shipped configs/eval/suites.yaml: " + suites_help())
    group.add_argument("--tasks", help="comma-separated task names or task YAML files")
    ap.add_argument("--out", required=True, help="output folder (predictions JSONL + summary.json)")
    ap.add_argument("--evaluator", choices=EVALUATORS, help="emotune (default: the paper's protocol) or lm_eval "
                    "(lm-evaluation-harness on harness task names / task YAMLs; key=value: num_fewshot, limit, "
                    "batch_size, dtype, device, bootstrap_iters, trust_remote_code); default: the suite's")
    ap.add_argument("--against", help="instruct tasks: compare with another checkpoint, an AlpacaEval-format "
                                      "outputs JSON, or `reference` (the set's reference responses)")
    ap.add_argument("--judge", help="the pairwise judge: a local causal LM folder or hub id (with --against)")
    ap.add_argument("--judge-format", default=None, help="autoj | pandalm | plain (default plain)")
    ap.add_argument("--store", help="the result store to record each finished task in (default: that of the run "
                    "whose checkpoint --model is, RUN/eval/results.sqlite, else OUT/eval/results.sqlite)")
    ap.add_argument("overrides", nargs="*", help="task YAML files and key=value settings")
    # intermixed: `emotune eval my_task.yaml --model P --out D limit=50` as documented
    args = ap.parse_intermixed_args(argv)
    files = [a for a in args.overrides if "=" not in a and a.endswith((".yaml", ".yml"))]
    for a in args.overrides:
        if "=" not in a and a not in files:
            raise EmotuneError(f"argument {a!r}: expected a task file (*.yaml) or key=value; task names go in "
                               "--tasks a,b")
    return args, files


def _evaluator(args) -> str:
    """--evaluator, else the one the --suite declares (emotune.tasks.suites), else ours."""
    if args.evaluator:
        return args.evaluator
    return find_suite(args.suite).evaluator if args.suite else "emotune"


def _harness_specs(args, files: list[str]) -> list[str]:
    """Harness task names / task file paths: the harness suite's, then --tasks, then the task files."""
    specs = [t.spec for t in harness_members(find_suite(args.suite))] if args.suite else []
    return specs + [t.strip() for t in (args.tasks or "").split(",") if t.strip()] + files


def _tasks(args, files: list[str]) -> list[Task]:
    names = [t.strip() for t in (args.tasks or "").split(",") if t.strip()] + files
    suite = [m.task for m in suite_members(find_suite(args.suite))] if args.suite else []
    tasks = suite + [load_task(t) for t in names]
    if not tasks:
        raise EmotuneError("no task given: use --suite NAME, --tasks a,b or a task YAML file")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise EmotuneError(f"task name {dup!r} is given twice (its results would overwrite each other)")
    return tasks


def _reusable(summary_path: Path, model: str, model_fp: str, keys: dict[str, dict]) -> dict[str, TaskResult]:
    """The results in an existing summary that this run keeps: other tasks of the same model, and tasks
    of this run made with the same settings (one with other settings is refused)."""
    try:
        old = read_summary(summary_path)
        old_tasks = old.get("tasks", {})
        if not isinstance(old_tasks, dict):
            raise ValueError("tasks is not a mapping")
    except (OSError, ValueError, AttributeError):
        raise EmotuneError(f"{summary_path}: not a valid summary; move it away or pass resume=false") from None
    done: dict[str, TaskResult] = {}
    for name, r in old_tasks.items():
        try:
            result = TaskResult(**r)
        except TypeError:
            raise EmotuneError(f"{summary_path}: the entry of task {name!r} is not a task result; move the "
                               "file away or pass resume=false") from None
        old_key = (result.settings or {}).get("resume_key")
        # one summary, one model: by its weights where recorded (a moved folder is the same model)
        same_model = old_key["model"] == model_fp if isinstance(old_key, dict) else old.get("model") == model
        if name not in keys and not same_model:
            raise EmotuneError(f"{summary_path}: holds results of another model ({old.get('model')!r}, task "
                               f"{name!r}), not of {model!r}; use another --out")
        if result.predictions is None or (summary_path.parent / result.predictions).exists():
            if name in keys:  # a task of this run: reused only if made with the same settings
                check_reusable(summary_path, name, result.settings or {}, keys[name])
            done[name] = result
    return done


class Recorder:
    """Puts each finished task's result in the result store. This one records nothing; the `emotune eval`
    command gives one that does (emotune.launch.eval_cmd: this package does not import the store's)."""

    def check(self, model: str, out: Path, store: str | None) -> None:
        """Before any work: the store it would record in is usable (EmotuneError otherwise); nothing written."""

    def record(self, summary: Path, store: str | None, tasks: list[str] | None) -> tuple[Path, Path] | None:
        """Record `tasks` (None: all) of the summary; (store, the folder `emotune results` takes) or None."""
        return None


def main(argv: list[str], recorder: Recorder | None = None) -> int:
    try:
        args, files = _arguments(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    recorder = recorder or Recorder()
    recorder.check(args.model, Path(args.out), args.store)
    from emotune.hub import offline_if_unreachable

    offline = offline_if_unreachable()  # before any dataset / model / featuriser load: no minute of retries
    if offline:
        print(f"[eval] {offline}", flush=True)
    if _evaluator(args) == HARNESS:
        return _run_harness(args, files, recorder.record)
    opts = parse_overrides([a for a in args.overrides if a not in files])
    from emotune.eval.lm import load_causal_lm, resolve_device  # torch: after the argument checks

    opts["device"] = resolve_device(opts["device"])  # an unavailable device fails before any work
    tasks, keys, done = _plan(args, files, opts)
    against = None
    if args.against or args.judge or args.judge_format:
        from emotune.eval.instruct.against import prepare_against

        against = prepare_against(args, tasks, opts)
    todo = [t for t in tasks if t.name not in done]
    model = tokenizer = None
    if todo:
        model, tokenizer = load_causal_lm(args.model, "--model", opts["dtype"], opts["device"],
                                          opts["trust_remote_code"])
    results = _run_tasks(args, todo, done, keys, opts, model, tokenizer, recorder.record)
    if against is not None:
        del model  # the other side's checkpoint and the judge come next
        against.run(Path(args.out), results)
    return 0


def _run_harness(args: argparse.Namespace, files: list[str], record) -> int:
    from emotune.eval.kinds import load_entry

    run_harness = load_entry(KINDS[HARNESS].evaluator, "--evaluator lm_eval")
    rc = run_harness(args.model, _harness_specs(args, files), Path(args.out),
                     [a for a in args.overrides if a not in files], args.suite or "custom")
    if rc == 0 and (Path(args.out) / "summary.json").is_file():
        _recorded(record(Path(args.out) / "summary.json", args.store, None))
    return rc


def _plan(args: argparse.Namespace, files: list[str], opts: dict[str, Any]) -> tuple[list, dict, dict]:
    """The tasks, their resume keys and the results reusable from an earlier run; every bad input (task file,
    data, shard, output folder, model files) fails here, before the model is loaded."""
    from emotune.eval.lm import resolve_dtype
    from emotune.hub import resolve

    tasks = _tasks(args, files)
    if opts["shard"] is not None:
        for task in tasks:  # MAUVE and the oracle metrics are over all samples: not split into shards
            check_shardable(task.kind, parse_shard(opts["shard"])[1], f"{task.source}: shard={opts['shard']}")
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise EmotuneError(f"--out {out_dir}: exists and is not a folder")
    summary_path = out_dir / "summary.json"
    resolve(args.model, "--model", need_tokenizer=True, need_weights=True)  # the model's files, before any work
    model_fp = model_fingerprint(args.model)
    dtype = str(resolve_dtype(str(opts["dtype"]), opts["device"])).replace("torch.", "")
    keys = {t.name: result_key(t, opts, model_fp, dtype) for t in tasks}
    done = _reusable(summary_path, args.model, model_fp, keys) if summary_path.exists() and opts["resume"] else {}
    for task in tasks:
        if task.name in done:
            print(f"[eval] {task.name}: already in {summary_path} with the same settings, skipped")
    for task in tasks:
        if task.name not in done:
            check_task_data(task, opts["data_dir"])
            if opts["shard"] is not None:
                check_shard_rows(task, opts)
    return tasks, keys, done


def _run_tasks(args: argparse.Namespace, todo: list, done: dict, keys: dict, opts: dict[str, Any],
               model, tokenizer, record) -> dict[str, TaskResult]:
    """Run each task not reused, saving the summary and recording each as it finishes."""
    out_dir, suite = Path(args.out), args.suite or "custom"
    summary_path = out_dir / "summary.json"
    results = dict(done)
    retriever = []

    def retriever_factory():
        if not retriever:
            retriever.append(make_retriever(opts, tokenizer))
        return retriever[0]

    for task in todo:
        print(f"[eval] {task.name} ({task.kind}) ...", flush=True)
        try:
            result = run_task(task, model, tokenizer, out_dir, opts, retriever_factory)
        except EmotuneError as err:  # the one line names the task file, whichever part of the task raised
            raise (err if task.source in str(err) else EmotuneError(f"{task.source}: {err}")) from None
        result.settings.setdefault("dtype", str(next(model.parameters()).dtype).replace("torch.", ""))
        result.settings["resume_key"] = keys[task.name]
        results[task.name] = result
        save_summary(out_dir, args.model, suite, results)
        record(summary_path, args.store, [task.name])  # recorded as it finishes: a crash later loses nothing
        print(f"[eval] {task.name}: " + ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items()
                                                  if "/" not in k) + f" ({result.seconds:.1f}s)", flush=True)
    path, averages = save_summary(out_dir, args.model, suite, results)
    for name, value in averages.items():
        print(f"[eval] {name}: {value:.4f}")
    print(f"[eval] summary: {path}")
    _recorded(record(path, args.store, list(results)))  # the reused tasks too (made before recording, maybe)
    return results


def _recorded(where: tuple[Path, Path] | None) -> None:
    if where is not None:
        print(f"[eval] recorded in {where[0]} (see `emotune results {where[1]}`, `emotune report {where[1]} --out DIR`)")


def averages(results: dict[str, TaskResult]) -> dict[str, float]:
    """Mean accuracy over the tasks of each kind that names an average (ICL), and over every task that
    reports one."""
    out = {}
    for kind in KINDS.values():
        if kind.average:
            of_kind = [r.metrics["accuracy"] for r in results.values() if r.kind == kind.name and "accuracy" in r.metrics]
            if of_kind:
                out[kind.average] = sum(of_kind) / len(of_kind)
    every = [r.metrics["accuracy"] for r in results.values() if "accuracy" in r.metrics]
    if every:
        out["mean_accuracy"] = sum(every) / len(every)
    return out


def save_summary(out_dir: Path, model: str, suite: str, results: dict[str, TaskResult]):
    """The common summary (emotune.eval.summary) plus an additive `averages` field, and the same results in
    the harness's schema (results.json, emotune.eval.harness_schema); every write atomic."""
    from emotune.eval.harness_schema import to_harness_results

    path = write_summary(out_dir, model, suite, list(results.values()))
    summary = read_summary(path)
    summary["averages"] = averages(results)
    write_json_atomic(path, summary)
    write_json_atomic(path.parent / "results.json", to_harness_results(summary))
    return path, summary["averages"]
