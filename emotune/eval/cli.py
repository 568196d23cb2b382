"""`emotune eval`: evaluate one Hugging Face checkpoint on a suite of tasks.

    emotune eval --model PATH --suite icl|mmlu|paper --out DIR [key=value ...]
    emotune eval --model PATH --tasks sst2,trec,my_task.yaml --out DIR [key=value ...]
    emotune eval my_task.yaml --model PATH --out DIR [key=value ...]

Writes `DIR/<task>.predictions.jsonl` per task and `DIR/summary.json` (emotune.eval.summary) after every
task, so an interrupted run resumes where it stopped: finished tasks of the same model are not redone.
"""

from __future__ import annotations

import argparse
import importlib
import os
from pathlib import Path
from typing import Any

import yaml

from emotune.errors import EmotuneError
from emotune.eval.summary import TaskResult, read_summary, write_json_atomic, write_summary
from emotune.eval.tasks import Task, load_suite, load_task

# key=value overrides and their defaults
DEFAULTS: dict[str, Any] = {
    "encoder": "default",  # sentence-transformers model for retrieval; "all-mpnet-base-v2" is the paper's
    "roundtrip_tokenizer": None,  # "model" or a tokenizer path: OpenICL's tokenize/decode before embedding
    "scoring": None,  # full (OpenICL) | continuation; None = the task file's options.scoring or full
    "shared_prefix": True,
    "batch_size": 8,  # test inputs per model call
    "dtype": "auto",  # float32 | bfloat16 | float16 | auto (bfloat16 on a GPU that has it, else float32)
    "device": None,  # cpu | cuda | cuda:1 ... (default: cuda if available)
    "limit": None,  # evaluate only the first N test rows (per subject for MMLU)
    "max_tokens": None,  # drop the least similar demos until every candidate fits (OpenICL max_model_token_num)
    "data_dir": None,  # local data: DIR/<task>/<split>.jsonl|csv|parquet (or DIR/<split>.*)
    "cache_dir": None,  # retriever embedding cache (default $EMOTUNE_CACHE or ~/.cache/emotune)
    "retriever_batch_size": 64,
    "progress": True,
    "resume": True,
    "trust_remote_code": False,
    # generation suites (emotune.eval.generation; docs/generation-eval.md)
    "runs": None,  # samples per prefix (default 5, the paper's runs)
    "seed": None,
    "gen_batch_size": None,
    "featurizer": None,  # MAUVE features: gpt2-large on a cluster; any local causal LM or encoder offline
    "max_text_length": None,
    "pooling": None,
    "feature_cache_dir": None,
    "oracle": None,  # a causal LM whose perplexity of the samples is PPL_oracle
    "reference": None,  # a causal LM for forward / reverse token-level cross-entropy
    "ce_vocab_size": None,
    "metrics": None,
    "lm_limit": None,
}


def parse_overrides(items: list[str]) -> dict[str, Any]:
    opts = dict(DEFAULTS)
    for item in items:
        if "=" not in item:
            raise EmotuneError(f"argument {item!r}: expected key=value (keys: {', '.join(DEFAULTS)})")
        key, value = item.split("=", 1)
        if key not in DEFAULTS:
            raise EmotuneError(f"argument {item!r}: unknown key {key!r} (keys: {', '.join(DEFAULTS)})")
        try:
            opts[key] = yaml.safe_load(value) if value != "" else None
        except yaml.YAMLError:
            opts[key] = value
    for key in ("batch_size", "limit", "max_tokens", "retriever_batch_size"):
        v = opts[key]
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise EmotuneError(f"argument {key}={v!r}: must be a positive integer")
    return opts


def resolve_dtype(name: str, device: str):
    import torch

    if name == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise EmotuneError(f"argument dtype={name!r}: use float32, bfloat16, float16 or auto")
    return table[name]


def load_model(path: str, dtype: str = "auto", device: str | None = None, trust_remote_code: bool = False):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = resolve_dtype(str(dtype), device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, trust_remote_code=trust_remote_code)
        except TypeError:  # transformers < 4.56 calls it torch_dtype
            model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch_dtype,
                                                         trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise EmotuneError(f"--model {path}: cannot load a causal LM and its tokenizer ({err})") from None
    return model.to(device).eval(), tokenizer


def make_retriever(opts: dict[str, Any], tokenizer):
    from emotune.eval.retriever import TopkRetriever

    cache = opts["cache_dir"] or Path(os.environ.get("EMOTUNE_CACHE", Path.home() / ".cache" / "emotune")) / "retriever"
    rt = opts["roundtrip_tokenizer"]
    return TopkRetriever(opts["encoder"], batch_size=opts["retriever_batch_size"], cache_dir=cache,
                         roundtrip_tokenizer=tokenizer if rt == "model" else rt, device=opts["device"])


def run_task(task: Task, model, tokenizer, out_dir: Path, opts: dict[str, Any], retriever_factory) -> TaskResult:
    common = {k: opts[k] for k in ("data_dir", "scoring", "shared_prefix", "batch_size", "limit", "progress")}
    if task.kind == "icl":
        from emotune.eval.icl import run_icl_task

        return run_icl_task(task, model, tokenizer, out_dir, retriever=retriever_factory(),
                            max_tokens=opts["max_tokens"], **common)
    if task.kind == "mmlu":
        from emotune.eval.mmlu import run_mmlu_task

        return run_mmlu_task(task, model, tokenizer, out_dir, **common)
    # kinds implemented in other modules, imported only when such a task runs
    module, func = {"generation": ("emotune.eval.generation", "run_generation_task"),
                    "oracle": ("emotune.eval.oracle", "run_oracle_task")}[task.kind]
    try:
        run = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as err:
        raise EmotuneError(f"{task.source}: kind {task.kind!r} needs {module}.{func}, which is not available "
                           f"in this installation ({err})") from None
    return run(task, model, tokenizer, out_dir, **opts)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="emotune eval", description=__doc__.splitlines()[0],
                                 epilog="overrides (key=value): " + ", ".join(f"{k}={v}" for k, v in DEFAULTS.items()))
    ap.add_argument("--model", required=True, help="Hugging Face checkpoint folder or hub id")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--suite", help="suite name from the shipped configs/eval/suites.yaml (icl, mmlu, paper)")
    group.add_argument("--tasks", help="comma-separated task names or task YAML files")
    ap.add_argument("--out", required=True, help="output folder (predictions JSONL + summary.json)")
    ap.add_argument("overrides", nargs="*", help="task YAML files and key=value settings")
    try:
        args = ap.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    files = [a for a in args.overrides if "=" not in a and a.endswith((".yaml", ".yml"))]
    opts = parse_overrides([a for a in args.overrides if a not in files])
    if args.suite:
        tasks = load_suite(args.suite)
    else:
        names = [t.strip() for t in (args.tasks or "").split(",") if t.strip()] + files
        tasks = [load_task(t) for t in names]
    if not tasks:
        raise EmotuneError("no task given: use --suite NAME, --tasks a,b or a task YAML file")
    suite = args.suite or "custom"
    out_dir = Path(args.out)
    summary_path = out_dir / "summary.json"

    done: dict[str, TaskResult] = {}
    if summary_path.exists() and opts["resume"]:
        try:
            old = read_summary(summary_path)
        except ValueError:
            raise EmotuneError(f"{summary_path}: not a valid summary; move it away or pass resume=false") from None
        if old.get("model") != args.model:
            raise EmotuneError(f"{summary_path}: holds results of model {old.get('model')!r}, not {args.model!r}; "
                               "use another --out")
        for name, r in old.get("tasks", {}).items():
            pred = r.get("predictions")
            if pred is None or (out_dir / pred).exists():
                done[name] = TaskResult(**r)

    results = dict(done)
    todo = [t for t in tasks if t.name not in done]
    for task in tasks:
        if task.name in done:
            print(f"[eval] {task.name}: already in {summary_path}, skipped")
    if todo:
        model, tokenizer = load_model(args.model, opts["dtype"], opts["device"], opts["trust_remote_code"])
    retriever = []

    def retriever_factory():
        if not retriever:
            retriever.append(make_retriever(opts, tokenizer))
        return retriever[0]

    for task in todo:
        print(f"[eval] {task.name} ({task.kind}) ...", flush=True)
        result = run_task(task, model, tokenizer, out_dir, opts, retriever_factory)
        result.settings.setdefault("dtype", str(next(model.parameters()).dtype).replace("torch.", ""))
        results[task.name] = result
        save_summary(out_dir, args.model, suite, results)
        print(f"[eval] {task.name}: " + ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items()
                                                  if "/" not in k) + f" ({result.seconds:.1f}s)", flush=True)
    path, averages = save_summary(out_dir, args.model, suite, results)
    for name, value in averages.items():
        print(f"[eval] {name}: {value:.4f}")
    print(f"[eval] summary: {path}")
    return 0


def averages(results: dict[str, TaskResult]) -> dict[str, float]:
    """Mean accuracy over the ICL tasks, and over every task that reports one."""
    out = {}
    icl = [r.metrics["accuracy"] for r in results.values() if r.kind == "icl" and "accuracy" in r.metrics]
    every = [r.metrics["accuracy"] for r in results.values() if "accuracy" in r.metrics]
    if icl:
        out["icl_mean_accuracy"] = sum(icl) / len(icl)
    if every:
        out["mean_accuracy"] = sum(every) / len(every)
    return out


def save_summary(out_dir: Path, model: str, suite: str, results: dict[str, TaskResult]):
    """The common summary (emotune.eval.summary) plus an additive `averages` field; both writes atomic."""
    path = write_summary(out_dir, model, suite, list(results.values()))
    summary = read_summary(path)
    summary["averages"] = averages(results)
    write_json_atomic(path, summary)
    return path, summary["averages"]
