"""emotune as users get it (tests/installed_venv.py): a wheel installed into a fresh venv, every command run
from an empty directory with no source tree on the path. The demo runs the same way in test_demo.py."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from installed_venv import install_wheel
from test_eval_fixtures import TEST_TEXTS, TRAIN_TEXTS, build_llama, build_tokenizer, write_jsonl

from emotune.tasks.suites import load_suite

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    return install_wheel(tmp_path_factory.mktemp("installed"))


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


def test_eval_paper_suite_finds_its_eight_tasks(installed):
    root = installed.root / "eval"
    tok = build_tokenizer(root / "model")
    build_llama(root / "model", len(tok))
    data = root / "data"
    tasks = [t for t in load_suite("paper") if t.kind == "icl"]  # the task definitions give the labels
    names = [t.name for t in tasks]
    for task in tasks:
        n = len(task.labels)
        for split, texts in (("train", TRAIN_TEXTS * 2), ("test", TEST_TEXTS[:2])):
            write_jsonl(data / task.name / f"{split}.jsonl",
                        [{"text": t, task.label_column: task.labels[i % n]} for i, t in enumerate(texts)])
    rows = [{"subject": "virology", "question": f"{t} ?", "choices": ["one", "two", "three", "four"], "answer": i % 4}
            for i, t in enumerate(TEST_TEXTS[:5])]  # 5-shot: 5 dev rows
    for split in ("test", "dev"):
        write_jsonl(data / "mmlu" / f"{split}.jsonl", rows)
    res = installed("emotune", "eval", "--model", str(root / "model"), "--suite", "paper", "--out", str(root / "out"),
                    f"data_dir={data}", "progress=false")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    summary = json.loads((root / "out" / "summary.json").read_text())
    assert summary["suite"] == "paper" and sorted(summary["tasks"]) == sorted(names + ["mmlu"])
