"""The bad-input corpus: every command, every kind of input a user gets wrong.

Each case builds one bad input (a config, an override, a data file, a DeepSpeed JSON, a task file, a
checkpoint, a result store, a CLI argument) next to the outputs of a good run (a tiny model, a run
directory with a checkpoint, a training log and a result store, an evaluation folder with its summary)
and runs the command in-process through `emotune.cli.main`. Every case must give exit status 2,
exactly one line on stderr (`emotune CMD: error: ...`) naming the file / key / line at fault, no
traceback, and leave every earlier output byte-identical. A few cases run through the real entry point
(`python -m emotune`) as subprocesses, to prove the same holds there.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml
from scheduling_helpers import write_checkpoint
from train_builders import REPO, alpaca_rows, make_tiny_llama, make_wordpiece_tokenizer, run_config, write_corpus

from emotune.cli import main as cli_main
from emotune.eval.summary import TaskResult, write_summary
from emotune.resources import shipped
from emotune.scheduling.store import Store

# ---------------------------------------------------------------------------------------------- the good run


@dataclass
class World:
    root: Path
    model: Path  # tiny LLaMA + tokenizer (max_position_embeddings=256)
    train: Path
    valid: Path
    alpaca: Path
    run: Path  # a run directory: config.yaml, train_log.jsonl, checkpoint-3, eval/results.sqlite
    store: Path
    evalout: Path  # an evaluation folder: summary.json + predictions of task `done` for `model`
    good_task: Path  # a local ICL task file (good data)
    suite: Path  # a suite file listing good_task
    good_train: Path  # a valid training config writing into `run`
    ds: Path  # a valid DeepSpeed JSON

    def train_cfg(self, d: Path, mutate: Callable[[dict], None] | None = None, name: str = "train.yaml") -> Path:
        cfg = yaml.safe_load(self.good_train.read_text())
        if mutate:
            mutate(cfg)
        path = d / name
        path.write_text(yaml.safe_dump(cfg))
        return path

    def ds_json(self, d: Path, mutate: Callable[[dict], object]) -> Path:
        ds = json.loads(self.ds.read_text())
        ds = mutate(ds) or ds
        path = d / "ds.json"
        path.write_text(json.dumps(ds))
        return path

    def model_copy(self, d: Path, drop: tuple[str, ...] = (), name: str = "model") -> Path:
        dst = d / name
        shutil.copytree(self.model, dst)
        for pattern in drop:
            for f in dst.glob(pattern):
                f.unlink()
        return dst

    def task(self, d: Path, mutate: Callable[[dict], None] | None = None, test_rows: list | None = None,
             name: str = "task.yaml") -> Path:
        cfg = yaml.safe_load(self.good_task.read_text())
        cfg["dataset"]["data_files"] = {k: str(self.good_task.parent / v) for k, v in cfg["dataset"]["data_files"].items()}
        if test_rows is not None:
            path = d / "test.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in test_rows))
            cfg["dataset"]["data_files"]["test"] = str(path)
        if mutate:
            mutate(cfg)
        path = d / name
        path.write_text(yaml.safe_dump(cfg))
        return path


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_cache) -> World:
    root = tmp_path_factory.mktemp("bad-inputs")
    model = tiny_cache.checkpoint("train")  # read-only: the cases that change it work on w.model_copy
    data = root / "data"
    data.mkdir()
    write_corpus(data / "train.txt", 200, seed=1)
    write_corpus(data / "valid.txt", 20, seed=2)
    (data / "alpaca.jsonl").write_text("".join(json.dumps(r) + "\n" for r in alpaca_rows(16)))
    run = root / "run"
    setup = {"model": str(model), "train": str(data / "train.txt"), "valid": str(data / "valid.txt")}
    cfg = run_config(setup, run, deepspeed=str(shipped("deepspeed/zero3-cpu-test.json")))
    good_train = root / "good-train.yaml"
    good_train.write_text(yaml.safe_dump(cfg))
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (run / "train_log.jsonl").write_text("".join(json.dumps({"step": s, "loss": 5.0 - s, "ce": 5.0 - s}) + "\n"
                                                 for s in (1, 2, 3)))
    ckpt = write_checkpoint(run, 3, final=True)
    store_path = run / "eval" / "results.sqlite"
    with Store(store_path) as store:
        store.enqueue(str(run.resolve()), 3, "fp3", "tiny", "v1", ["done"], str(ckpt), 3072, "emo")
        (row, token), = store.claim("test", 60.0)
        store.finish(row.id, token, {"accuracy": 0.75}, 4, None, None, 0.1)
    evalout = root / "evalout"
    (evalout / "done.predictions.jsonl").parent.mkdir()
    (evalout / "done.predictions.jsonl").write_text(json.dumps({"i": 0, "pred": 1}) + "\n")
    write_summary(evalout, str(model), "custom",
                  [TaskResult("done", "icl", {"accuracy": 0.5}, 1, "done.predictions.jsonl", 0.1)])
    tasks = root / "tasks"
    tasks.mkdir()
    words = ["river town", "forest road", "old bridge", "quiet harbour", "north library", "summer festival"]
    (tasks / "train.jsonl").write_text("".join(json.dumps({"text": w, "label": i % 2}) + "\n" for i, w in enumerate(words)))
    (tasks / "test.jsonl").write_text("".join(json.dumps({"text": w, "label": i % 2}) + "\n" for i, w in enumerate(words[:4])))
    good_task = tasks / "topic.yaml"
    good_task.write_text(yaml.safe_dump({
        "name": "topic", "kind": "icl", "dataset": {"data_files": {"train": "train.jsonl", "test": "test.jsonl"}},
        "index_split": "train", "test_split": "test", "input_columns": ["text"], "label_column": "label", "ice_num": 2,
        "templates": {0: "<X> It is about the town.", 1: "<X> It is about the forest."}}))
    suite = tasks / "suite.yaml"
    suite.write_text(yaml.safe_dump([str(good_task)]))
    (root / "cases").mkdir()
    return World(root, model, data / "train.txt", data / "valid.txt", data / "alpaca.jsonl", run,
                 store_path, evalout, good_task, suite, good_train, shipped("deepspeed/zero3-cpu-test.json"))


# What a command never writes and the test run itself does (the repository's checkout, its tooling's caches)
NOT_OUTPUTS = {".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", ".ruff_cache", ".whl", ".gl"}


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root (the good run's outputs and the case's own inputs) and its SHA-256, every folder
    (a command that only creates an empty run directory has written something too)."""
    out = {}
    for p in sorted(root.rglob("*")):
        parts = p.relative_to(root).parts
        if NOT_OUTPUTS.intersection(parts) or any(part.endswith(".egg-info") for part in parts):
            continue
        out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
    return out


def snapshots(cwd: Path, root: Path) -> dict[str, str]:
    """The world's outputs and, when a case runs elsewhere (the demo runs in the repository, where it writes its
    runs/), everything under the directory it runs in."""
    both = {f"world/{k}": v for k, v in snapshot(root).items()}
    if cwd != root:
        both.update({f"cwd/{k}": v for k, v in snapshot(cwd).items()})
    return both


# ---------------------------------------------------------------------------------------------- the corpus

CASES: list[tuple[str, Callable[[World, Path], tuple[list[str], list[str]]]]] = []


def case(name: str):
    def register(fn):
        CASES.append((name, fn))
        return fn
    return register


def garbage(path: Path, n: int = 4096, seed: int = 0) -> Path:
    import random

    path.write_bytes(bytes(random.Random(seed).randrange(256) for _ in range(n)))
    return path


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def set_key(cfg: dict, dotted: str, value) -> None:
    node = cfg
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value


def train_with(**values):
    """A train case: the good config with dotted keys set (value None deletes nothing; use a mutate for that)."""
    def build(w: World, d: Path):
        path = w.train_cfg(d, lambda c: [set_key(c, k.replace("__", "."), v) for k, v in values.items()])
        return ["train", str(path)], [str(path)]
    return build


# --- train: the config file and its overrides
@case("train-yaml-syntax")
def _(w, d):
    p = d / "c.yaml"
    p.write_text("output_dir: x\nmodel:\n  name_or_path: [unclosed\nseed: 1\n")
    return ["train", str(p)], [str(p), "line "]


@case("train-yaml-binary")
def _(w, d):
    p = garbage(d / "c.yaml")
    return ["train", str(p)], [str(p)]


@case("train-yaml-not-mapping")
def _(w, d):
    p = d / "c.yaml"
    p.write_text("- a\n- b\n")
    return ["train", str(p)], [str(p), "mapping"]


@case("train-config-missing")
def _(w, d):
    return ["train", str(d / "nope.yaml")], ["nope.yaml"]


CASES += [
    ("train-unknown-key", lambda w, d: (["train", str(w.train_cfg(d, lambda c: c.update(learnin_rate=1)))], ["learnin_rate"])),
    ("train-wrong-type", train_with(per_device_train_batch_size="many")),
    ("train-negative-lr", train_with(learning_rate=-1.0)),
    ("train-bad-scheduler", train_with(lr_scheduler_type="triangle")),
    ("train-objective-unknown", train_with(objective__name="emx")),
    ("train-objective-param", train_with(objective__params={"bogus_weight": 1})),
    ("train-both-model-sources", train_with(model__config={"model_type": "llama"})),
    ("train-report-to-unknown", lambda w, d: (lambda a, n: (a, n + ["report_to", "mlflow"]))(*train_with(report_to=["jsonl", "mlflow"])(w, d))),
]


@case("train-teacher-missing")
def _(w, d):
    return ["train", str(w.good_train), "objective.params={target: teacher}"], ["teacher.model", "target 'teacher'"]


@case("train-teacher-without-teacher-target")
def _(w, d):
    return ["train", str(w.good_train), f"teacher.model={w.model}"], ["teacher:", "objective.params.target"]


@case("train-teacher-temperature-twice")
def _(w, d):
    return (["train", str(w.good_train), "objective.params={target: teacher, temperature: 2.0}", f"teacher.model={w.model}"],
            ["objective.params.temperature", "teacher.temperature"])


def _other_tokenizer_model(w, path: Path) -> Path:
    """A tiny LLaMA with as many output rows as the student's, of another tokenizer family: same text, other ids."""
    from transformers import AutoTokenizer

    size = len(AutoTokenizer.from_pretrained(str(w.model)))
    with contextlib.redirect_stderr(io.StringIO()):  # the save's progress bar is not the command's stderr
        make_tiny_llama(path, make_wordpiece_tokenizer(path.parent / "tok", size), hidden=16, layers=1)
    return path


@case("train-teacher-other-tokenizer")
def _(w, d):
    return (["train", str(w.good_train), "objective.params={target: teacher}",
             f"teacher.model={_other_tokenizer_model(w, d / 'teacher')}"],
            ["teacher.model", "the teacher's tokenizer is not the student's"])


@case("train-cost-other-tokenizer")
def _(w, d):  # objective.cost: external from such a head
    return (["train", str(w.good_train), "objective.cost=external", f"objective.cost_source={_other_tokenizer_model(w, d / 'cost')}"],
            ["objective.cost_source", "the cost source's tokenizer is not the student's"])


@case("train-teacher-dir-missing")
def _(w, d):
    return (["train", str(w.good_train), "objective.params={target: teacher}", f"teacher.model={d}/absent"],
            ["teacher.model", "absent"])


@case("train-resume-missing")
def _(w, d):
    return ["train", str(w.good_train), f"resume={d}/no-state"], ["resume_from_checkpoint", "no-state"]


@case("train-output-dir-is-file")
def _(w, d):
    return ["train", str(w.good_train), f"output_dir={w.good_train}"], ["output_dir", str(w.good_train)]


@case("train-override-not-kv")
def _(w, d):
    return ["train", str(w.good_train), "learning_rate"], ["learning_rate"]


@case("train-override-not-section")
def _(w, d):
    return ["train", str(w.good_train), "learning_rate.x=1"], ["learning_rate"]


@case("train-override-bad-value")
def _(w, d):
    return ["train", str(w.good_train), "data.block_size=-4"], ["data.block_size"]


@case("train-unknown-option")
def _(w, d):
    return ["train", str(w.good_train), "--lerning-rate", "1"], ["--lerning-rate"]


# --- train: the model
def fresh(**config):
    def build(w: World, d: Path):
        def mutate(c):
            c["model"] = {"config": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                                     "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
                                     **config}, "tokenizer_name_or_path": str(w.model), "torch_dtype": "float32"}
        path = w.train_cfg(d, mutate)
        return ["train", str(path)], ["model.config"]
    return build


CASES += [
    ("train-model-heads-vs-width", fresh(hidden_size=30)),
    ("train-model-kv-heads", fresh(num_key_value_heads=3)),
    ("train-model-unknown-type", fresh(model_type="llamma")),
    ("train-model-negative-layers", fresh(num_hidden_layers=-1)),
]


@case("train-block-size-above-positions")
def _(w, d):
    return ["train", str(w.good_train), "data.block_size=4096"], ["data.block_size", "256"]


@case("train-block-size-above-fresh-positions")
def _(w, d):
    argv, _ = fresh(max_position_embeddings=16)(w, d)
    return argv, ["data.block_size", "16"]


@case("train-max-length-above-positions")
def _(w, d):
    path = w.train_cfg(d, lambda c: c.update(data={"format": "instruction", "train_files": [str(w.alpaca)],
                                                   "max_length": 1024}))
    return ["train", str(path)], ["data.max_length"]


@case("train-model-dir-missing")
def _(w, d):
    return ["train", str(w.good_train), f"model.name_or_path={d}/no/such/model"], ["model.name_or_path", "no/such/model"]


@case("train-model-no-tokenizer")
def _(w, d):
    m = w.model_copy(d, drop=("tokenizer*", "special_tokens_map.json", "vocab.json", "merges.txt"))
    return ["train", str(w.good_train), f"model.name_or_path={m}"], ["model.name_or_path", str(m)]


@case("train-model-garbage-safetensors")
def _(w, d):
    m = w.model_copy(d)
    garbage(m / "model.safetensors")
    return ["train", str(w.good_train), f"model.name_or_path={m}"], [str(m / "model.safetensors")]


@case("train-model-truncated-safetensors")
def _(w, d):
    m = w.model_copy(d)
    truncate(m / "model.safetensors")
    return ["train", str(w.good_train), f"model.name_or_path={m}"], [str(m / "model.safetensors")]


@case("train-model-garbage-config-json")
def _(w, d):
    m = w.model_copy(d)
    (m / "config.json").write_text("{not json")
    return ["train", str(w.good_train), f"model.name_or_path={m}"], [str(m / "config.json")]


@case("train-model-hub-id-offline")
def _(w, d):
    return ["train", str(w.good_train), "model.name_or_path=nobody-xyz/no-such-model"], ["model.name_or_path", "nobody-xyz/no-such-model"]


@case("train-tokenizer-dir-empty")
def _(w, d):
    (d / "tok").mkdir()
    return ["train", str(w.good_train), f"model.tokenizer_name_or_path={d / 'tok'}"], ["model.tokenizer_name_or_path"]


def _cost_dir(w, d, damage):
    m = w.model_copy(d, name="cost")
    damage(m / "model.safetensors")
    return m / "model.safetensors"


CASES += [
    ("train-cost-garbage-safetensors", lambda w, d: (
        ["train", str(w.good_train), "objective.cost=external", f"objective.cost_source={_cost_dir(w, d, garbage).parent}"],
        [str(d / "cost" / "model.safetensors")])),
    ("train-cost-truncated-safetensors", lambda w, d: (
        ["train", str(w.good_train), "objective.cost=external", f"objective.cost_source={_cost_dir(w, d, truncate).parent}"],
        [str(d / "cost" / "model.safetensors")])),
    ("train-cost-dir-missing", lambda w, d: (
        ["train", str(w.good_train), "objective.cost=external", f"objective.cost_source={d}/absent"],
        ["objective.cost_source"])),
    ("train-cost-no-safetensors", lambda w, d: (
        ["train", str(w.good_train), "objective.cost=external", f"objective.cost_source={w.model_copy(d, ('*.safetensors',))}"],
        ["objective.cost_source"])),
    ("train-cost-without-source", lambda w, d: (["train", str(w.good_train), "objective.cost=external"], ["cost_source"])),
]


# --- train: the DeepSpeed JSON
def ds_case(mutate, names):
    def build(w: World, d: Path):
        path = w.ds_json(d, mutate)
        return ["train", str(w.good_train), f"deepspeed={path}"], [str(path), *names]
    return build


def _set(ds, dotted, value):
    set_key(ds, dotted, value)
    return ds


CASES += [
    ("ds-top-level-list", ds_case(lambda ds: [ds], [])),
    ("ds-zero-not-object", ds_case(lambda ds: _set(ds, "zero_optimization", [3]), ["zero_optimization"])),
    ("ds-optimizer-params-list", ds_case(lambda ds: _set(ds, "optimizer.params", [1]), ["optimizer.params"])),
    ("ds-micro-batch-string", ds_case(lambda ds: _set(ds, "train_micro_batch_size_per_gpu", "x"), ["train_micro_batch_size_per_gpu"])),
    ("ds-micro-batch-disagrees", ds_case(lambda ds: _set(ds, "train_micro_batch_size_per_gpu", 7), ["train_micro_batch_size_per_gpu"])),
    ("ds-zero-stage-word", ds_case(lambda ds: _set(ds, "zero_optimization.stage", "three"), ["zero_optimization.stage"])),
    ("ds-zero-unknown-key", ds_case(lambda ds: _set(ds, "zero_optimization.stage3_bogus", 1), ["stage3_bogus"])),
    ("ds-scheduler-section", ds_case(lambda ds: _set(ds, "scheduler", {"type": "WarmupLR"}), ["scheduler"])),
    ("ds-bf16-not-object", ds_case(lambda ds: _set(ds, "bf16", True), ["bf16"])),
    ("ds-clipping-negative", ds_case(lambda ds: _set(ds, "gradient_clipping", -1), ["gradient_clipping"])),
]


@case("ds-invalid-json")
def _(w, d):
    p = d / "ds.json"
    p.write_text('{\n  "zero_optimization": {\n    "stage": 3,\n  }\n}\n')
    return ["train", str(w.good_train), f"deepspeed={p}"], [str(p), "line 4"]


@case("ds-binary")
def _(w, d):
    p = garbage(d / "ds.json")
    return ["train", str(w.good_train), f"deepspeed={p}"], [str(p)]


@case("ds-missing")
def _(w, d):
    return ["train", str(w.good_train), f"deepspeed={d}/none.json"], ["deepspeed", "none.json"]


# --- train: the data files
def data_case(filename: str, content: bytes | str, names_fn, fmt: str = "text", validation: bool = False):
    def build(w: World, d: Path):
        p = d / filename
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        data = {"format": fmt, "block_size": 32}
        if validation:
            data.update(train_files=[str(w.train)], validation_files=[str(p)])
        else:
            data.update(train_files=[str(p)], validation_files=[str(w.valid)] if fmt == "text" else None)
        if fmt in ("instruction", "chat"):
            data.update(max_length=128)
        if fmt == "chat":
            data.update(chat_template=CHAT_TEMPLATE)  # the tiny model's tokenizer has none
        path = w.train_cfg(d, lambda c: c.update(data={k: v for k, v in data.items() if v is not None}))
        return ["train", str(path)], [str(p), *names_fn]
    return build


GOOD_JSONL = [json.dumps({"text": t}) for t in ("one two three", "four five six", "seven eight")]
GOOD_ALPACA = [json.dumps(r) for r in alpaca_rows(5)]
GOOD_CHAT = [json.dumps({"messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]})
             for r in alpaca_rows(5)]
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{% if m['role'] == 'assistant' %}{{ eos_token }}"
                 "{% endif %}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def chat_line(*turns, key: str = "messages", keys: tuple[str, str] = ("role", "content")) -> str:
    return json.dumps({key: [dict(zip(keys, t)) for t in turns]})
BINARY = bytes(range(128, 256)) * 8

CASES += [
    ("data-txt-binary", data_case("train.txt", b"fine first line\nsecond line\n" + BINARY, ["line 3"])),
    ("data-txt-nul-bytes", data_case("train.txt", "a line\nanother\x00line\n", ["line 2"])),
    ("data-jsonl-binary", data_case("train.jsonl", BINARY, ["line 1"])),
    ("data-jsonl-middle-missing-text", data_case("train.jsonl", "\n".join(GOOD_JSONL[:2] + ['{"txt": "x"}'] + GOOD_JSONL), ["line 3", "text"])),
    ("data-jsonl-middle-null-text", data_case("train.jsonl", "\n".join(GOOD_JSONL[:3] + ['{"text": null}'] + GOOD_JSONL), ["line 4", "text"])),
    ("data-jsonl-middle-number-text", data_case("train.jsonl", "\n".join(GOOD_JSONL[:1] + ['{"text": 12}'] + GOOD_JSONL), ["line 2"])),
    ("data-jsonl-middle-invalid", data_case("train.jsonl", "\n".join(GOOD_JSONL[:2] + ['{"text": "x"'] + GOOD_JSONL), ["line 3"])),
    ("data-jsonl-middle-not-object", data_case("train.jsonl", "\n".join(GOOD_JSONL[:2] + ['["x"]'] + GOOD_JSONL), ["line 3"])),
    ("data-json-array-not-object", data_case("train.json", json.dumps([{"text": "a"}, "b", {"text": "c"}]), ["record 2"])),
    ("data-instruction-middle-missing-output", data_case(
        "alpaca.jsonl", "\n".join(GOOD_ALPACA[:3] + [json.dumps({"instruction": "x", "input": ""})] + GOOD_ALPACA),
        ["line 4", "output"], fmt="instruction")),
    ("data-instruction-output-number", data_case(
        "alpaca.jsonl", "\n".join(GOOD_ALPACA[:1] + [json.dumps({"instruction": "x", "output": 3})] + GOOD_ALPACA),
        ["line 2", "output"], fmt="instruction")),
    ("data-instruction-missing-instruction", data_case(
        "alpaca.jsonl", "\n".join(GOOD_ALPACA[:2] + [json.dumps({"output": "x"})]), ["line 3", "instruction"], fmt="instruction")),
    ("data-instruction-from-txt", data_case("alpaca.txt", "a\nb\n", ["instruction"], fmt="instruction")),
    ("data-chat-wrong-role", data_case(
        "chat.jsonl", "\n".join(GOOD_CHAT[:2] + [chat_line(("user", "hi"), ("bot", "x"))] + GOOD_CHAT),
        ["line 3", "turn 2", "'bot'"], fmt="chat")),
    ("data-chat-sharegpt-wrong-from", data_case(
        "chat.jsonl", "\n".join(GOOD_CHAT + [chat_line(("human", "hi"), ("assistant", "x"), key="conversations",
                                                          keys=("from", "value"))]), ["line 6", "turn 2", "'assistant'"], fmt="chat")),
    ("data-chat-empty-conversation", data_case(
        "chat.jsonl", "\n".join(GOOD_CHAT[:1] + ['{"messages": []}'] + GOOD_CHAT), ["line 2", "empty conversation"], fmt="chat")),
    ("data-chat-no-assistant-turn", data_case(
        "chat.jsonl", "\n".join(GOOD_CHAT[:3] + [chat_line(("system", "s"), ("user", "hi"))] + GOOD_CHAT),
        ["line 4", "no assistant turn"], fmt="chat")),
    ("data-chat-content-not-string", data_case(
        "chat.jsonl", "\n".join(GOOD_CHAT[:4] + [json.dumps({"messages": [{"role": "user", "content": "q"},
                                                                            {"role": "assistant", "content": ["a"]}]})]),
        ["line 5", "turn 2", "'content'", "list"], fmt="chat")),
    ("data-chat-no-messages-field", data_case(
        "chat.jsonl", "\n".join(GOOD_CHAT[:2] + GOOD_ALPACA[:1]), ["line 3", "'messages'", "data.messages_column"], fmt="chat")),
    ("data-chat-from-txt", data_case("chat.txt", "a\nb\n", ["conversation"], fmt="chat")),
    ("data-parquet-garbage", data_case("train.parquet", BINARY, [])),
    ("data-unsupported-suffix", data_case("train.csv", "text\na\n", [".csv"])),
    ("data-empty", data_case("train.txt", "", ["empty"])),
    ("data-validation-bad-record", data_case("valid.jsonl", "\n".join(GOOD_JSONL + ['{"body": "x"}']), ["line 4"], validation=True)),
]


@case("data-train-files-empty-list")
def _(w, d):
    path = w.train_cfg(d, lambda c: c["data"].update(train_files=[]))
    return ["train", str(path)], [str(path), "data.train_files"]


def chat_cfg(w: World, d: Path, **data) -> Path:
    (d / "chat.jsonl").write_text("\n".join(GOOD_CHAT) + "\n")
    return w.train_cfg(d, lambda c: c.update(data={"format": "chat", "train_files": [str(d / "chat.jsonl")],
                                                   "max_length": 128, **data}))


@case("train-chat-tokenizer-without-template")
def _(w, d):
    return ["train", str(chat_cfg(w, d))], ["model.name_or_path", str(w.model), "no chat template", "data.chat_template"]


@case("train-chat-template-neither-file-nor-jinja")
def _(w, d):
    return ["train", str(chat_cfg(w, d, chat_template="templates/chatml.jinja"))], ["data.chat_template", "chatml.jinja"]


@case("train-chat-template-syntax")
def _(w, d):
    return ["train", str(chat_cfg(w, d, chat_template="{% for m in messages %}{{ m.content }}"))], ["data.chat_template", "Jinja"]


@case("train-chat-template-without-chat-format")
def _(w, d):
    path = w.train_cfg(d, lambda c: c["data"].update(chat_template=CHAT_TEMPLATE))
    return ["train", str(path)], [str(path), "data.chat_template", "data.format: chat"]


@case("data-file-missing")
def _(w, d):
    path = w.train_cfg(d, lambda c: c["data"].update(train_files=[str(d / "gone.txt")]))
    return ["train", str(path)], ["gone.txt", "data.train_files"]


# --- eval
def ev(*extra):
    return lambda w: ["eval", "--model", str(w.model), "--tasks", str(w.good_task), "--out", str(w.evalout), *extra]


@case("eval-model-missing")
def _(w, d):
    return ["eval", "--model", str(d / "nope"), "--tasks", str(w.good_task), "--out", str(d / "o")], ["--model", "nope"]


def _eval_model(w, d, damage):
    m = w.model_copy(d)
    damage(m)
    return ["eval", "--model", str(m), "--tasks", str(w.good_task), "--out", str(d / "out")]


CASES += [
    ("eval-model-garbage-safetensors", lambda w, d: (_eval_model(w, d, lambda m: garbage(m / "model.safetensors")),
                                                     [str(d / "model" / "model.safetensors")])),
    ("eval-model-truncated-safetensors", lambda w, d: (_eval_model(w, d, lambda m: truncate(m / "model.safetensors")),
                                                       [str(d / "model" / "model.safetensors")])),
    ("eval-model-no-tokenizer", lambda w, d: (_eval_model(w, d, lambda m: [f.unlink() for f in m.glob("tokenizer*")]),
                                              ["--model", str(d / "model")])),
    ("eval-model-no-config", lambda w, d: (_eval_model(w, d, lambda m: (m / "config.json").unlink()),
                                           ["--model", "config.json"])),
    ("eval-model-lora-adapter-dir", lambda w, d: (
        _eval_model(w, d, lambda m: (shutil.copytree(m, d / "merged"), (m / "config.json").unlink(),
                                     shutil.move(str(d / "merged"), str(m / "merged")))),
        ["--model", "config.json", "merged"])),
    ("eval-model-hub-id-offline", lambda w, d: (["eval", "--model", "nobody-xyz/no-such-model", "--tasks", str(w.good_task),
                                                 "--out", str(d / "o")], ["--model", "nobody-xyz/no-such-model"])),
    ("eval-device-missing-gpu", lambda w, d: (ev("device=cuda:999")(w), ["device", "cuda:999"])),
    ("eval-device-garbage", lambda w, d: (ev("device=banana")(w), ["device", "banana"])),
    ("eval-dtype", lambda w, d: (ev("dtype=int8")(w), ["dtype"])),
    ("eval-batch-size-zero", lambda w, d: (ev("batch_size=0")(w), ["batch_size"])),
    ("eval-limit-negative", lambda w, d: (ev("limit=-1")(w), ["limit"])),
    ("eval-unknown-key", lambda w, d: (ev("bogus=1")(w), ["bogus"])),
    ("eval-unknown-suite", lambda w, d: (["eval", "--model", str(w.model), "--suite", "nosuch", "--out", str(d / "o")], ["nosuch"])),
    ("eval-unknown-task", lambda w, d: (["eval", "--model", str(w.model), "--tasks", "nosuchtask", "--out", str(d / "o")], ["nosuchtask"])),
    ("eval-missing-out", lambda w, d: (["eval", "--model", str(w.model), "--tasks", str(w.good_task)], ["--out"])),
    ("eval-task-missing-key", lambda w, d: (ev()(w)[:4] + [str(w.task(d, lambda c: c.pop("templates")))] + ev()(w)[5:],
                                            [str(d / "task.yaml"), "templates"])),
    ("eval-task-bad-kind", lambda w, d: (ev()(w)[:4] + [str(w.task(d, lambda c: c.update(kind="ppl")))] + ev()(w)[5:],
                                         [str(d / "task.yaml"), "kind"])),
    ("eval-task-later-row-lacks-column", lambda w, d: (
        ev()(w)[:4] + [str(w.task(d, test_rows=[{"text": "a b", "label": 0}, {"text": "c", "label": 1}, {"label": 0}]))] + ev()(w)[5:],
        [str(d / "task.yaml"), "row 3", "text"])),
    ("eval-task-later-row-null-label", lambda w, d: (
        ev()(w)[:4] + [str(w.task(d, test_rows=[{"text": "a b", "label": 0}, {"text": "c", "label": None}]))] + ev()(w)[5:],
        [str(d / "task.yaml"), "row 2", "label"])),
    ("eval-task-unknown-label", lambda w, d: (
        ev()(w)[:4] + [str(w.task(d, test_rows=[{"text": "a b", "label": 0}, {"text": "c", "label": 7}]))] + ev()(w)[5:],
        [str(d / "task.yaml"), "label 7"])),
]


CASES += [  # sharded evaluation (emotune.tasks.shards): shard=K/N and the `shards` keys
    ("eval-shard-k-above-n", lambda w, d: (ev("shard=3/2")(w), ["shard", "K/N"])),
    ("eval-shard-zero", lambda w, d: (ev("shard=0/4")(w), ["shard"])),
    ("eval-shard-not-k-of-n", lambda w, d: (ev("shard=two")(w), ["shard", "K/N"])),
    ("eval-shard-more-than-rows", lambda w, d: (ev("shard=1/9")(w), [str(w.good_task), "shard=1/9", "4 test rows"])),
    ("eval-task-shards-not-int", lambda w, d: (ev()(w)[:4] + [str(w.task(d, lambda c: c.update(shards=1.5)))] + ev()(w)[5:],
                                               [str(d / "task.yaml"), "shards"])),
    ("watch-task-shards-zero", lambda w, d: (watch(suite=_suite(d, [str(w.task(d, lambda c: c.update(shards=0)))]))(w),
                                             [str(d / "task.yaml"), "shards"])),
    ("watch-suite-entry-shards-not-int", lambda w, d: (
        watch(suite=_suite(d, [{"task": str(w.good_task), "shards": "two"}]))(w), [str(d / "suite.yaml"), "shards"])),
    ("watch-suite-shards-negative", lambda w, d: (
        watch(suite=_suite(d, {"tasks": [str(w.good_task)], "shards": -1}))(w), [str(d / "suite.yaml"), "shards"])),
    ("watch-suite-entry-unknown-key", lambda w, d: (
        watch(suite=_suite(d, [{"task": str(w.good_task), "shard": 2}]))(w), [str(d / "suite.yaml"), "shards"])),
    ("watch-shards-on-a-generation-task", lambda w, d: (
        watch(suite=_suite(d, [{"task": "generation-wikitext2", "shards": 2}]))(w), ["generation-wikitext2", "shards",
                                                                                      "MAUVE"])),
]


def _suite(d: Path, entries) -> Path:
    p = d / "suite.yaml"
    p.write_text(yaml.safe_dump(entries))
    return p


@case("eval-task-yaml-syntax")
def _(w, d):
    p = d / "task.yaml"
    p.write_text("name: t\nkind: icl\ntemplates: {0: 'a <X>', 1: 'b <X>'\ninput_columns: [text]\n")
    return ev()(w)[:4] + [str(p)] + ev()(w)[5:], [str(p), "line "]


@case("eval-task-data-binary")
def _(w, d):
    p = garbage(d / "test.jsonl")
    t = w.task(d, lambda c: c["dataset"]["data_files"].update(test=str(p)))
    return ev()(w)[:4] + [str(t)] + ev()(w)[5:], [str(p)]


@case("eval-summary-corrupt")
def _(w, d):
    out = d / "out"
    out.mkdir()
    garbage(out / "summary.json")
    return ["eval", "--model", str(w.model), "--tasks", str(w.good_task), "--out", str(out)], [str(out / "summary.json")]


@case("eval-summary-other-model")
def _(w, d):
    return ["eval", "--model", str(w.model_copy(d)), "--tasks", str(w.good_task), "--out", str(w.evalout)], [
        str(w.evalout / "summary.json")]


# --- eval --evaluator lm_eval (lm-evaluation-harness; its registry index takes ~10-20 s, so only one case needs it)
def harness_yaml(d: Path, body: str | None = None, **keys) -> Path:
    """A harness multiple-choice task over a local JSON file in `d` (good unless `keys` / `body` break it)."""
    data = d / "mc.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": i % 2}) + "\n" for i, t in enumerate(["a b", "c d"])))
    cfg = {"task": "bad_mc", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
           "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{text}} It is",
           "doc_to_choice": ["yes.", "no."], "doc_to_target": "label", **keys}
    p = d / "harness.yaml"
    p.write_text(body if body is not None else yaml.safe_dump(cfg))
    return p


def hv(w, d, task: str, *extra):
    return ["eval", "--evaluator", "lm_eval", "--model", str(w.model), "--tasks", task, "--out", str(d / "o"), *extra]


CASES += [
    ("eval-harness-unknown-task", lambda w, d: (hv(w, d, "no_such_harness_task"), ["no_such_harness_task", "registry"])),
    ("eval-harness-yaml-syntax", lambda w, d: (hv(w, d, str(harness_yaml(d, "task: t\ndoc_to_text: [a\n"))),
                                               [str(d / "harness.yaml"), "line "])),
    ("eval-harness-yaml-no-task", lambda w, d: (hv(w, d, str(harness_yaml(d, "dataset_path: json\n"))),
                                                [str(d / "harness.yaml"), "'task'"])),
    ("eval-harness-yaml-output-type", lambda w, d: (hv(w, d, str(harness_yaml(d, output_type="nonsense"))),
                                                    [str(d / "harness.yaml"), "output_type"])),
    ("eval-harness-yaml-missing-column", lambda w, d: (hv(w, d, str(harness_yaml(d, doc_to_text="{{nope}} It is"))),
                                                       [str(d / "harness.yaml"), "nope"])),
    ("eval-harness-yaml-data-missing", lambda w, d: (
        hv(w, d, str(harness_yaml(d, dataset_kwargs={"data_files": {"test": str(d / "gone.jsonl")}}))),
        [str(d / "harness.yaml"), "gone.jsonl"])),
    ("eval-harness-bad-option", lambda w, d: (hv(w, d, "arc_easy", "num_fewshot=-1"), ["num_fewshot"])),
    ("eval-harness-our-option", lambda w, d: (hv(w, d, "arc_easy", "encoder=x"), ["encoder", "lm_eval"])),
]


@case("watch-harness-suite-bad-task-file")
def _(w, d):
    suite = d / "harness-suite.yaml"
    suite.write_text(yaml.safe_dump({"evaluator": "lm_eval", "tasks": [str(harness_yaml(d, "dataset_path: json\n"))]}))
    return watch(suite=suite)(w), [str(d / "harness.yaml"), "'task'"]


@case("watch-suite-unknown-evaluator")
def _(w, d):
    suite = d / "suite.yaml"
    suite.write_text(yaml.safe_dump({"evaluator": "helm", "tasks": [str(w.good_task)]}))
    return watch(suite=suite)(w), [str(suite), "evaluator", "helm"]


# --- watch
def watch(*extra, suite=None):
    return lambda w: ["watch", str(w.run), "--suite", str(suite or w.suite), "--once", *extra]


CASES += [
    ("watch-run-missing", lambda w, d: (["watch", str(d / "norun"), "--suite", str(w.suite), "--once"], ["norun"])),
    ("watch-jobs-negative", lambda w, d: (watch("--jobs", "-1")(w), ["--jobs"])),
    ("watch-jobs-not-int", lambda w, d: (watch("--jobs", "two")(w), ["--jobs"])),
    ("watch-max-queued-zero", lambda w, d: (watch("--max-queued", "0")(w), ["--max-queued"])),
    ("watch-lease-ttl-zero", lambda w, d: (watch("--lease-ttl", "0")(w), ["--lease-ttl"])),
    ("watch-max-attempts-zero", lambda w, d: (watch("--max-attempts", "0")(w), ["--max-attempts"])),
    ("watch-devices-empty-entry", lambda w, d: (watch("--devices", "0,,1")(w), ["--devices"])),
    ("watch-devices-not-gpu", lambda w, d: (watch("--devices", "gpu0,gpu1")(w), ["--devices"])),
    ("watch-unknown-suite", lambda w, d: (["watch", str(w.run), "--suite", "nosuch", "--once"], ["nosuch"])),
    ("watch-bad-eval-command", lambda w, d: (watch("--eval-command", "{python} eval {nope}")(w), ["eval command", "nope"])),
    ("watch-sbatch-arg-newline", lambda w, d: (watch("--runner", "slurm", "--sbatch-arg", "--gres=gpu:1\nrm -rf ~")(w),
                                               ["--sbatch-arg"])),
    ("watch-sbatch-arg-not-option", lambda w, d: (watch("--runner", "slurm", "--sbatch-arg", "partition=gpu")(w),
                                                  ["--sbatch-arg", "partition=gpu"])),
    ("watch-after-not-job-id", lambda w, d: (watch("--runner", "slurm", "--after", "12;rm")(w), ["--after"])),
    ("watch-setup-newline", lambda w, d: (watch("--runner", "slurm", "--setup", "module load x\nrm -rf ~")(w), ["--setup"])),
    ("watch-unknown-runner", lambda w, d: (watch("--runner", "k8s")(w), ["--runner"])),
]


@case("watch-suite-yaml-syntax")
def _(w, d):
    p = d / "suite.yaml"
    p.write_text("- a.yaml\n- [b\n")
    return watch(suite=p)(w), [str(p), "line "]


@case("watch-suite-empty")
def _(w, d):
    p = d / "suite.yaml"
    p.write_text("[]\n")
    return watch(suite=p)(w), [str(p)]


@case("watch-suite-bad-task")
def _(w, d):
    t = w.task(d, lambda c: c.update(ice_num=-2))
    p = d / "suite.yaml"
    p.write_text(yaml.safe_dump([str(t)]))
    return watch(suite=p)(w), [str(t), "ice_num"]


@case("watch-store-garbage")
def _(w, d):
    s = garbage(d / "store.sqlite")
    return watch("--store", str(s))(w), [str(s)]


@case("watch-store-zero-bytes")
def _(w, d):
    s = d / "store.sqlite"
    s.write_bytes(b"")
    os.utime(s, (time.time() - 60, time.time() - 60))
    return watch("--store", str(s))(w), [str(s)]


@case("watch-store-other-database")
def _(w, d):
    s = d / "other.sqlite"
    with sqlite3.connect(s) as db:
        db.execute("CREATE TABLE notes (t TEXT)")
    db.close()
    return watch("--store", str(s))(w), [str(s)]


# --- results
def results_store(make):
    def build(w: World, d: Path):
        s = make(d / "store.sqlite")
        return ["results", str(w.run), "--store", str(s)], [str(s)]
    return build


def _zero(p: Path) -> Path:
    p.write_bytes(b"")
    os.utime(p, (time.time() - 60, time.time() - 60))
    return p


def _other_db(p: Path) -> Path:
    with sqlite3.connect(p) as db:
        db.execute("CREATE TABLE notes (t TEXT)")
    db.close()
    return p


def _newer_schema(p: Path) -> Path:
    with Store(p):
        pass
    with sqlite3.connect(p) as db:
        db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    db.close()
    return p


def _damaged(p: Path) -> Path:
    """A real store whose pages after the header are overwritten: SQLite's 'malformed' errors."""
    with Store(p) as s:
        s.enqueue("r", 1, "f", "s", "v", [f"t{i}" for i in range(200)], "c")
    data = bytearray(p.read_bytes())
    data[4096:] = bytes(len(data) - 4096)
    p.write_bytes(bytes(data))
    return p


CASES += [
    ("results-store-zero-bytes", results_store(_zero)),
    ("results-store-garbage", results_store(lambda p: garbage(p))),
    ("results-store-other-database", results_store(_other_db)),
    ("results-store-newer-schema", results_store(_newer_schema)),
    ("results-store-damaged", results_store(_damaged)),
    ("results-store-is-directory", lambda w, d: (["results", str(w.run), "--store", str(d)], [str(d)])),
    ("results-no-store", lambda w, d: (["results", str(d)], [str(d)])),
    ("results-unknown-option", lambda w, d: (["results", str(w.run), "--jsn"], ["--jsn"])),
]

# --- report
CASES += [
    ("report-run-missing", lambda w, d: (["report", str(d / "norun"), "--out", str(d / "rep")], ["norun"])),
    ("report-store-garbage", lambda w, d: (["report", str(w.run), "--out", str(d / "rep"), "--store", str(garbage(d / "s.sqlite"))],
                                           [str(d / "s.sqlite")])),
    ("report-store-zero-bytes", lambda w, d: (["report", str(w.run), "--out", str(d / "rep"), "--store", str(_zero(d / "s.sqlite"))],
                                              [str(d / "s.sqlite")])),
    ("report-store-missing", lambda w, d: (["report", str(w.run), "--out", str(d / "rep"), "--store", str(d / "none.sqlite")],
                                           ["none.sqlite"])),
    ("report-out-is-file", lambda w, d: (["report", str(w.run), "--out", str(w.good_train)], [str(w.good_train)])),
    ("report-no-results", lambda w, d: (["report", str(d), "--out", str(d / "rep")], [str(d)])),
    ("report-missing-out", lambda w, d: (["report", str(w.run)], ["--out"])),
    ("report-unknown-option", lambda w, d: (["report", str(w.run), "--out", str(d / "rep"), "--sute", "x"], ["--sute"])),
    ("report-headline-undirected", lambda w, d: (["report", str(w.run), "--out", str(d / "rep"), "--headline", "done/samples"],
                                                 ["done/samples", "headline"])),
]


# --- launch
def launch(*extra, config=None):
    return lambda w: ["launch", str(config or w.good_train), *extra, "--dry-run"]


@case("launch-hostfile-bad-line")
def _(w, d):
    h = d / "hosts"
    h.write_text("node1 slots=2\nnode2 slots=two\n")
    return launch("--nodes", "2", "--hostfile", str(h))(w), [str(h), "line 2"]


CASES += [
    ("launch-config-missing", lambda w, d: (launch(config=d / "none.yaml")(w), ["none.yaml"])),
    ("launch-config-invalid", lambda w, d: (launch(config=w.train_cfg(d, lambda c: c.update(max_stepz=3)))(w), ["max_stepz"])),
    ("launch-override-invalid", lambda w, d: (["launch", str(w.good_train), "learning_rate=-3", "--dry-run"], ["learning_rate"])),
    ("launch-node-rank-out-of-range", lambda w, d: (launch("--nodes", "2", "--launcher", "torchrun", "--node-rank", "5")(w),
                                                    ["--node-rank"])),
    ("launch-master-port", lambda w, d: (launch("--master-port", "70000")(w), ["--master-port"])),
    ("launch-ssh-port", lambda w, d: (launch("--ssh-port", "0")(w), ["--ssh-port"])),
    ("launch-env-not-kv", lambda w, d: (launch("--env", "NOEQUALS")(w), ["--env"])),
    ("launch-nodes-zero", lambda w, d: (launch("--nodes", "0")(w), ["--nodes"])),
    ("launch-multi-node-no-hostfile", lambda w, d: (launch("--nodes", "2")(w), ["--hostfile"])),
    ("launch-gpus-per-node-negative", lambda w, d: (launch("--sbatch", str(d / "sb"), "--gpus-per-node", "-1")(w),
                                                    ["--gpus-per-node"])),
    ("launch-sbatch-dir-newline", lambda w, d: (launch("--sbatch", str(d / "sb\n#SBATCH --wrap=x"))(w), ["--sbatch"])),
    ("launch-unknown-launcher", lambda w, d: (launch("--launcher", "mpirun")(w), ["--launcher"])),
]


# --- pipeline (and the demo, which is the pipeline on configs/pipelines/demo.yaml)
def pipe(d: Path, w: World, data: dict | None = None, text: str | None = None) -> Path:
    p = d / "pipeline.yaml"
    base = {"train": {"config": str(w.good_train)}, "run_dir": str(w.run), "eval": {"suite": str(w.suite)}}
    p.write_text(text if text is not None else yaml.safe_dump(data if data is not None else base))
    return p


def pipe_with(mutate, names):
    def build(w: World, d: Path):
        base = {"train": {"config": str(w.good_train)}, "run_dir": str(w.run), "eval": {"suite": str(w.suite)}}
        mutate(base, w, d)
        p = pipe(d, w, base)
        return ["pipeline", str(p)], [str(p), *names]
    return build


CASES += [
    ("pipeline-yaml-syntax", lambda w, d: (["pipeline", str(pipe(d, w, text="train: {config: a\neval: b\n"))], [str(d / "pipeline.yaml"), "line "])),
    ("pipeline-unknown-key", pipe_with(lambda c, w, d: c.update(evaluate=True), ["evaluate"])),
    ("pipeline-train-and-runs", pipe_with(lambda c, w, d: c.update(runs=[{"name": "a", "train": {"config": "x.yaml"}}]), ["runs"])),
    ("pipeline-runs-without-run-dir", pipe_with(lambda c, w, d: (c.pop("train"), c.pop("run_dir"),
                                                                 c.update(runs=[{"name": "a", "train": {"config": "x"}}])), ["run_dir"])),
    ("pipeline-eval-jobs-zero", pipe_with(lambda c, w, d: c["eval"].update(jobs=0), ["eval.jobs"])),
    ("pipeline-report-headline", pipe_with(lambda c, w, d: c.setdefault("report", {}).update(headline=["n_examples"]),
                                           ["report.headline", "n_examples"])),
    ("pipeline-eval-runner", pipe_with(lambda c, w, d: c["eval"].update(runner="k8s"), ["eval.runner"])),
    ("pipeline-eval-devices", pipe_with(lambda c, w, d: c["eval"].update(devices="a;b"), ["--devices"])),
    ("pipeline-eval-sbatch-arg-newline", pipe_with(lambda c, w, d: c["eval"].update(runner="slurm", sbatch_args=["-p x\nrm"]),
                                                   ["--sbatch-arg"])),
    ("pipeline-prepare-empty-command", pipe_with(lambda c, w, d: c.update(prepare=[[]]), ["prepare"])),
    ("pipeline-duplicate-run-names", pipe_with(lambda c, w, d: (c.pop("train"), c.update(runs=[
        {"name": "same", "train": {"config": str(w.good_train)}, "matrix": {"seed": [1, 2]}}])), ["same"])),
    ("pipeline-missing-eval", pipe_with(lambda c, w, d: c.pop("eval"), ["eval"])),
    ("pipeline-override-not-kv", lambda w, d: (["pipeline", str(pipe(d, w)), "eval.jobs"], ["eval.jobs"])),
    ("pipeline-pairwise-unknown-run", pipe_with(lambda c, w, d: c.update(pairwise=[
        {"a": "run", "b": "nope", "judge": str(w.model), "task": "topic"}]), ["pairwise.0.b", "nope"])),
    ("pipeline-pairwise-task-not-in-suite", pipe_with(lambda c, w, d: c.update(pairwise=[
        {"a": "run", "b": str(w.run.parent), "judge": str(w.model)}]), ["pairwise.0.task", "alpaca_eval"])),
    ("pipeline-pairwise-judge-missing", pipe_with(lambda c, w, d: c.update(pairwise=[
        {"a": "run", "b": str(w.run.parent), "judge": str(d / "no-judge"), "task": "topic"}]),
        ["pairwise.0.judge", "no-judge"])),
    ("pipeline-pairwise-format", pipe_with(lambda c, w, d: c.update(pairwise=[
        {"a": "run", "b": "x", "judge": "j", "format": "gpt4"}]), ["pairwise.0.format"])),
]


@case("pipeline-train-config-invalid")
def _(w, d):
    t = w.train_cfg(d, lambda c: c.update(save_stepz=1), name="bad-train.yaml")
    p = pipe(d, w, {"train": {"config": str(t)}, "run_dir": str(w.run), "eval": {"suite": str(w.suite)}})
    return ["pipeline", str(p)], [str(t), "save_stepz"]


CASES += [
    ("demo-unknown-override-key", lambda w, d: (["demo", "bogus_key=1"], ["configs/pipelines/demo.yaml", "bogus_key"])),
    ("demo-eval-jobs-negative", lambda w, d: (["demo", "eval.jobs=-1"], ["eval.jobs"])),
    ("demo-override-not-kv", lambda w, d: (["demo", "eval.jobs"], ["eval.jobs"])),
    ("demo-bad-run-index", lambda w, d: (["demo", "runs.7.matrix.seed=[0]"], ["runs.7.matrix.seed"])),
]


# --- eval: instruction following, --against and the judge (docs/instruct-eval.md)
def instruct_args(w: World, d: Path, *extra: str) -> list[str]:
    data = d / "data" / "alpaca_eval"
    data.mkdir(parents=True)
    rows = [{"instruction": f"say {i}", "output": f"ok {i}", "generator": "ref", "dataset": "x"} for i in range(3)]
    (data / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ["eval", "--suite", "instruct", "--model", str(w.model), "--out", str(d / "out"), f"data_dir={d / 'data'}",
            *extra]


def outputs_file(d: Path, records: list) -> Path:
    path = d / "other.json"
    path.write_text(json.dumps(records))
    return path


CASES += [
    ("eval-instruct-no-judge", lambda w, d: (instruct_args(w, d, "--against", "reference"), ["--against", "--judge"])),
    ("eval-instruct-judge-without-tokenizer", lambda w, d: (instruct_args(
        w, d, "--against", "reference", "--judge", str(w.model_copy(d, ("tokenizer*", "special_tokens_map.json"),
                                                                    "judge"))), ["--judge", "no tokenizer"])),
    ("eval-instruct-judge-format", lambda w, d: (instruct_args(w, d, "--against", "reference", "--judge", str(w.model),
                                                               "--judge-format", "gpt4"), ["--judge-format", "gpt4"])),
    ("eval-instruct-outputs-wrong-format", lambda w, d: (instruct_args(w, d, "--against", str(outputs_file(d, [
        {"instruction": "say 0", "output": "a", "generator": "g", "dataset": "x"},
        {"instruction": "say 1", "response": "b", "generator": "g", "dataset": "x"}])), "--judge", str(w.model)),
        ["other.json", "record 2", "'output'"])),
    ("eval-instruct-outputs-not-a-list", lambda w, d: (instruct_args(w, d, "--against", str(outputs_file(
        d, {"say 0": "a"})), "--judge", str(w.model)), ["other.json", "not a JSON list"])),
    ("eval-instruct-different-instructions", lambda w, d: (instruct_args(w, d, "--against", str(outputs_file(d, [
        {"instruction": f"tell {i}", "output": "a", "generator": "g", "dataset": "x"} for i in range(3)])),
        "--judge", str(w.model)), ["different instruction sets", "other.json"])),
    ("eval-instruct-against-missing-checkpoint", lambda w, d: (instruct_args(
        w, d, "--against", str(d / "no-such-ckpt"), "--judge", str(w.model)), ["--against", "no-such-ckpt"])),
    ("eval-instruct-bad-decoding", lambda w, d: (instruct_args(w, d, "decoding=beam"), ["decoding"])),
    ("eval-instruct-judge-without-against", lambda w, d: (instruct_args(w, d, "--judge", str(w.model)),
                                                          ["--judge", "--against"])),
    ("judge-outputs-wrong-format", lambda w, d: (["judge", str(outputs_file(d, [{"instruction": "a", "output": 1,
                                                 "generator": "g", "dataset": "x"}])), str(d / "other.json"),
                                                 "--judge", str(w.model), "--out", str(d / "o")],
                                                ["other.json", "record 1", "'output'"])),
    ("judge-without-tokenizer", lambda w, d: (["judge", str(outputs_file(d, [{"instruction": "a", "output": "b",
                                              "generator": "g", "dataset": "x"}])), str(d / "other.json"), "--judge",
                                              str(w.model_copy(d, ("tokenizer*", "special_tokens_map.json"), "j")),
                                              "--out", str(d / "o")], ["--judge", "no tokenizer"])),
]


# ---------------------------------------------------------------------------------------------- the checks

def check_outcome(rc: int, stderr: str, command: str, names: list[str], before: dict, after: dict) -> None:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr
    assert rc == 2, f"exit status {rc}, stderr:\n{stderr}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    assert lines[0].startswith(f"emotune {command}: error: "), lines[0]
    for name in names:
        assert name in lines[0], f"{name!r} not named in: {lines[0]}"
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"earlier outputs changed: {changed}"


@pytest.mark.parametrize("name,build", CASES, ids=[c[0] for c in CASES])
def test_bad_input(world, name, build, capfd, monkeypatch):
    d = world.root / "cases" / name
    d.mkdir()
    argv, names = build(world, d)
    cwd = REPO if argv[0] == "demo" else world.root
    monkeypatch.chdir(cwd)
    before = snapshots(cwd, world.root)
    handlers, level = logging.root.handlers[:], logging.root.level
    t0 = time.time()
    try:
        rc = cli_main(argv)
    except SystemExit as exit_:  # argparse --help and friends; bad input never gets here
        rc = exit_.code
    finally:
        logging.root.handlers[:] = handlers  # a command's log handler holds this test's captured stderr
        logging.root.setLevel(level)
    seconds = time.time() - t0
    out, err = capfd.readouterr()
    check_outcome(rc, err, argv[0], names, before, snapshots(cwd, world.root))
    assert seconds < 30, f"{name}: {seconds:.0f}s to report bad input (a hub id offline must fail fast)"


def test_nothing_written_covers_the_directory_a_case_runs_in(tmp_path):
    """The demo's cases run in the repository: a run folder (even an empty one) or a file it leaves there is caught."""
    world_root, cwd = tmp_path / "world", tmp_path / "repo"
    (world_root / "run").mkdir(parents=True)
    cwd.mkdir()
    before = snapshots(cwd, world_root)
    (cwd / "runs" / "demo").mkdir(parents=True)
    with pytest.raises(AssertionError, match=r"cwd/runs"):
        check_outcome(2, "emotune demo: error: x\n", "demo", [], before, snapshots(cwd, world_root))
    (cwd / "runs" / "demo" / "report.html").write_text("<html>")
    with pytest.raises(AssertionError, match=r"cwd/runs/demo/report.html"):
        check_outcome(2, "emotune demo: error: x\n", "demo", [], before, snapshots(cwd, world_root))
    check_outcome(2, "emotune demo: error: x\n", "demo", [], before, before)


def test_corpus_size():
    commands = {name.split("-")[0] for name, _ in CASES}
    # the corpus as it stands (a case taken away must lower this on purpose), every name once
    assert len(CASES) >= 215 and len({n for n, _ in CASES}) == len(CASES)
    assert {"train", "ds", "data", "eval", "watch", "results", "report", "launch", "pipeline", "demo"} <= commands


# A few through the real entry point: a fresh interpreter, nothing captured in-process.
SUBPROCESS_CASES = ["data-txt-binary", "ds-zero-stage-word", "eval-model-truncated-safetensors", "watch-jobs-negative",
                    "results-store-zero-bytes", "train-yaml-syntax"]


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_bad_input_real_entry_point(world, name):
    build = dict(CASES)[name]
    d = world.root / "cases" / f"sub-{name}"
    d.mkdir()
    argv, names = build(world, d)
    before = snapshot(world.root)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "emotune", *argv], capture_output=True, text=True, cwd=world.root,
                         env=env, timeout=300)
    check_outcome(res.returncode, res.stderr, argv[0], names, before, snapshot(world.root))


def test_harness_not_installed_is_one_line(world, capfd, monkeypatch):
    """Without lm_eval, `--evaluator lm_eval` says how to install it, in one line, before any work."""
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # what an environment without the package looks like to import
    before = snapshot(world.root)
    rc = cli_main(["eval", "--evaluator", "lm_eval", "--model", str(world.model), "--tasks", "arc_easy",
                   "--out", str(world.root / "o-harness")])
    _, err = capfd.readouterr()
    check_outcome(rc, err, "eval", ["lm_eval", "pip install 'emotune[harness]'"], before, snapshot(world.root))


@pytest.mark.parametrize("command", ["train", "eval"])
def test_unknown_hub_id_fails_fast_without_offline_flag(world, command, capfd, monkeypatch):
    """No HF_HUB_OFFLINE, but no route to the hub: one line at once, not a minute of retries."""
    from emotune import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    hub.hub_reachable.cache_clear()
    try:
        argv = (["train", str(world.good_train), "model.name_or_path=nobody-xyz/no-such-model"] if command == "train" else
                ["eval", "--model", "nobody-xyz/no-such-model", "--tasks", str(world.good_task), "--out", str(world.root / "o")])
        before, t0 = snapshot(world.root), time.time()
        rc = cli_main(argv)
        seconds = time.time() - t0
    finally:
        hub.hub_reachable.cache_clear()
    _, err = capfd.readouterr()
    check_outcome(rc, err, command, ["nobody-xyz/no-such-model", "unreachable"], before, snapshot(world.root))
    assert seconds < 10


def test_a_damaged_training_log_is_skipped_line_by_line(tmp_path):
    """The log may be being written (a torn last line) or damaged: its readable lines count, the rest is skipped."""
    from emotune.report.data import read_train_log

    log = tmp_path / "train_log.jsonl"
    log.write_bytes(json.dumps({"step": 1, "loss": 2.0}).encode() + b"\n" + BINARY + b"\n" + b'{"step": 2, "lo')
    train, evals = read_train_log(log)
    assert train == [{"step": 1, "loss": 2.0}] and evals == []
