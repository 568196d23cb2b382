"""emotune as users get it (tests/installed_venv.py): a wheel installed into a fresh venv, every command run
from an empty directory with no source tree on the path. The demo runs the same way in test_demo.py. The
wheel is built once per session (the `installed` fixture, tests/e2e/conftest.py)."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from eval_builders import TEST_TEXTS, TRAIN_TEXTS, build_llama, build_tokenizer, write_jsonl

from emotune.tasks.suites import load_suite

pytestmark = pytest.mark.e2e


def test_the_wheel_is_what_runs_and_ships_its_files(installed):
    where = installed("python", "-c", "import emotune, emotune.resources as r; print(emotune.__file__); print(r.shipped_root())")
    assert where.returncode == 0, where.stderr
    module, shipped = where.stdout.split()
    assert module.startswith(str(installed.purelib)) and shipped.startswith(str(installed.purelib))
    for rel in ("py.typed", "configs/eval/suites.yaml", "configs/deepspeed/zero3-bf16.json", "configs/pipelines/demo.yaml",
                "configs/train/tiny-cpu.yaml", "configs/train/data/tiny_corpus.txt", "configs/eval/tasks/mmlu.yaml"):
        assert (installed.purelib / "emotune" / rel).is_file(), rel
    assert not any(installed.purelib.glob("__editable__*emotune*"))
    assert installed("emotune", "--help").returncode == 0


def test_train_by_shipped_name_and_old_spelling_from_an_empty_directory(installed):
    out = installed.root / "run"
    # The shipped name finds the run config, its data files and its DeepSpeed JSON.
    res = installed("emotune", "train", "tiny-cpu", "max_steps=2", "save_steps=2", f"output_dir={out}")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert (out / "checkpoint-2" / "COMPLETE").exists()
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["deepspeed"] == "configs/deepspeed/zero3-cpu-test.json"  # as the shipped config spells it
    assert all(f.startswith(str(installed.purelib)) for f in config["data"]["train_files"])
    # The source-tree spelling of the README works too, and a file of the user's own wins.
    dry = installed("emotune", "launch", "configs/train/tiny-cpu.yaml", "--procs-per-node", "2", "--dry-run")
    assert dry.returncode == 0 and "--num_gpus 2" in dry.stdout, dry.stderr
    own = installed.work / "configs" / "train"
    own.mkdir(parents=True)
    (own / "tiny-cpu.yaml").write_text("not: [valid\n")
    mine = installed("emotune", "train", "configs/train/tiny-cpu.yaml")
    shutil.rmtree(installed.work / "configs")
    assert mine.returncode == 2 and "configs/train/tiny-cpu.yaml" in mine.stderr and "Traceback" not in mine.stderr
    missing = installed("emotune", "train", "no-such-config")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no-such-config" in missing.stderr


def test_eval_paper_suite_end_to_end_resumed_and_a_bad_task_file(installed):
    """`emotune eval --suite paper` on a tiny LLaMA with local data for all eight tasks, then a resumed run that
    redoes nothing, and a bad task file that exits 2 with one line."""
    root = installed.root / "eval"
    tok = build_tokenizer(root / "model")
    build_llama(root / "model", len(tok))
    data = root / "data"
    tasks = load_suite("paper")  # the task definitions give the labels
    names = [t.name for t in tasks if t.kind == "icl"]
    for task in tasks:
        if task.kind == "mmlu":
            rows = [{"subject": s, "question": f"{t} about {s} ?", "choices": ["one", "two", "three", "four"],
                     "answer": i % 4} for s in ("anatomy", "virology") for i, t in enumerate(TEST_TEXTS[:5])]
            write_jsonl(data / task.name / "test.jsonl", rows)
            write_jsonl(data / task.name / "dev.jsonl", rows)  # 5-shot: 5 dev rows per subject
            continue
        n = len(task.labels)
        for split, texts in (("train", TRAIN_TEXTS * 2), ("test", TEST_TEXTS[:3])):  # AG News: 30% of train
            write_jsonl(data / task.name / f"{split}.jsonl",
                        [{"text": t, task.label_column: task.labels[i % n]} for i, t in enumerate(texts)])
    out = root / "out"
    args = ["emotune", "eval", "--model", str(root / "model"), "--suite", "paper", "--out", str(out), f"data_dir={data}",
            f"cache_dir={root / 'cache'}", "progress=false"]
    res = installed(*args)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["suite"] == "paper" and sorted(summary["tasks"]) == sorted(names + ["mmlu"])
    for t in summary["tasks"].values():
        assert (out / t["predictions"]).exists() and 0.0 <= t["metrics"]["accuracy"] <= 1.0
    assert "accuracy_macro" in summary["tasks"]["mmlu"]["metrics"]
    assert set(summary["averages"]) == {"icl_mean_accuracy", "mean_accuracy"}

    res = installed(*args)  # resumed: everything already done
    assert res.returncode == 0 and res.stdout.count("already in") == 8, res.stdout[-2000:] + res.stderr[-3000:]

    bad = root / "bad.yaml"
    bad.write_text("name: bad\nkind: icl\ninput_columns: [text]\ntemplates: {0: 'It is a.', 1: '<X> It is b.'}\n")
    res = installed("emotune", "eval", str(bad), "--model", str(root / "model"), "--out", str(root / "o2"))  # a task file
    assert res.returncode == 2
    assert "bad.yaml" in res.stderr and "templates.0" in res.stderr and "Traceback" not in res.stderr
