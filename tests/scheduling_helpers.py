"""Shared by the scheduling tests: checkpoints written to the training stage's contract, and a counting evaluator.

`write_checkpoint` follows emotune.train.checkpoint.export_checkpoint's layout (files, then
manifest.json with the SHA-256 of every file, then the COMPLETE marker last) without building a
model, so scheduler tests can land many checkpoints cheaply. The tests that evaluate for real use
the training stage's exporter on a tiny model instead.

The counting evaluator is a stand-in for `emotune eval` *only* where a test is about scheduling
(many jobs, SIGKILLs): it writes a real summary.json through emotune.eval.summary and appends one
line per invocation to a log, so a test can count how often each (checkpoint, task) was evaluated.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import textwrap
from pathlib import Path

PY = sys.executable
REPO = Path(__file__).resolve().parents[1]


def write_checkpoint(run_dir: Path, step: int, *, complete: bool = True, tokens: int | None = None,
                     objective: str = "emo", final: bool = False, payload: bytes | None = None) -> Path:
    tmp = run_dir / f".checkpoint-{step}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    files = {"model.safetensors": payload or (b"weights-%d-" % step) * 64,
             "config.json": json.dumps({"model_type": "gpt2", "step": step}).encode()}
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    manifest = {"step": step, "tokens_seen": tokens if tokens is not None else step * 1024,
                "objective": {"name": objective, "params": {}}, "config_hash": "test", "format": "full",
                "files": {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}}
    if final:
        manifest["final"] = True
    (tmp / "manifest.json").write_text(json.dumps(manifest))
    final_path = run_dir / f"checkpoint-{step}"
    os.replace(tmp, final_path)
    if complete:
        (final_path / "COMPLETE").write_text(f"{step}\n")
    return final_path


COUNTING_EVALUATOR = textwrap.dedent('''
    import json, os, random, sys, time
    from emotune.eval.summary import TaskResult, write_summary
    model, task, out, log = sys.argv[1:5]
    opts = dict(zip(sys.argv[5::2], sys.argv[6::2]))
    task = os.path.splitext(os.path.basename(task))[0]  # given a task file: key the summary by the task's name
    with open(log, "a") as f:  # O_APPEND: one whole line per invocation, even from parallel jobs
        f.write(json.dumps({"model": model, "task": task, "pid": os.getpid(),
                            "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "t": time.time(),
                            "slurm_job": os.environ.get("SLURM_JOB_ID")}) + "\\n")
    for mode in ("--fail-once", "--hang-once"):  # misbehave on the first call only: the retry succeeds
        marker = opts.get(mode)
        if marker and not os.path.exists(marker):
            open(marker, "w").close()
            if mode == "--fail-once":
                sys.exit(3)
            time.sleep(600)
    time.sleep(random.uniform(0.05, 0.4))
    step = int(os.path.basename(model.rstrip("/")).split("-")[-1])
    acc = ((step * 7 + len(task)) % 50) / 100 + 0.4
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "predictions.jsonl"), "w") as f:
        f.write(json.dumps({"i": 0, "pred": 1, "gold": 1}) + "\\n")
    write_summary(out, model, "test", [TaskResult(task=task, kind="icl", metrics={"accuracy": acc}, n_examples=4,
                                                  predictions="predictions.jsonl", seconds=0.1)])
''')


def counting_evaluator(tmp: Path) -> tuple[str, Path]:
    """(eval command template, invocation log path)."""
    script = tmp / "counting_eval.py"
    script.write_text(COUNTING_EVALUATOR)
    log = tmp / "invocations.jsonl"
    return f"{PY} {script} {{model}} {{task}} {{out}} {log}", log


def read_invocations(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def write_suite(tmp: Path, names=("tiny_a", "tiny_b")) -> Path:
    """A suite file listing tiny local ICL tasks (JSONL written here)."""
    data = tmp / "data"
    data.mkdir(parents=True, exist_ok=True)
    rows = [{"text": t, "label": l} for t, l in [("good fun film", 1), ("a bad dull film", 0), ("great acting", 1),
                                                  ("boring plot", 0), ("lovely story", 1), ("awful mess", 0)]]
    entries = []
    for name in names:
        for split in ("train", "test"):
            (data / f"{name}_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        task = {"name": name, "kind": "icl",
                "dataset": {"data_files": {"train": str(data / f"{name}_train.jsonl"),
                                           "test": str(data / f"{name}_test.jsonl")}},
                "index_split": "train", "test_split": "test", "input_columns": ["text"], "label_column": "label",
                "ice_num": 2, "templates": {0: "Review: <X> It is negative.", 1: "Review: <X> It is positive."}}
        (tmp / f"{name}.yaml").write_text(json.dumps(task))
        entries.append(f"{name}.yaml")
    suite = tmp / "tinysuite.yaml"
    suite.write_text(json.dumps(entries))
    return suite


def env() -> dict:
    e = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return e


def write_model_checkpoint(run_dir: Path, step: int, model, tokenizer, *, objective: str = "emo",
                           tokens: int | None = None, final: bool = False) -> Path:
    """A real Hugging Face checkpoint (save_pretrained) with the training stage's manifest + COMPLETE marker."""
    tmp = run_dir / f".checkpoint-{step}.tmp"
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    files = sorted(p for p in tmp.rglob("*") if p.is_file())
    manifest = {"step": step, "tokens_seen": tokens if tokens is not None else step * 1024,
                "objective": {"name": objective, "params": {}}, "config_hash": "test", "format": "full",
                "files": {str(p.relative_to(tmp)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}}
    if final:
        manifest["final"] = True
    (tmp / "manifest.json").write_text(json.dumps(manifest))
    out = run_dir / f"checkpoint-{step}"
    os.replace(tmp, out)
    (out / "COMPLETE").write_text(f"{step}\n")
    return out
