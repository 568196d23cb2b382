"""End to end: `python -m emotune eval --suite paper` on a tiny LLaMA with local data for all eight tasks,
then a resumed run that redoes nothing, and a bad task file that exits 2 with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_eval_fixtures import TEST_TEXTS, TRAIN_TEXTS, build_llama, build_tokenizer, write_jsonl

from emotune.tasks.suites import load_suite


def emotune(*args, cwd=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "emotune", "eval", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


@pytest.mark.e2e
def test_paper_suite_end_to_end(tmp_path):
    tok = build_tokenizer(tmp_path / "model")
    build_llama(tmp_path / "model", len(tok))
    data = tmp_path / "data"
    for task in load_suite("paper"):
        if task.kind == "mmlu":
            rows = [{"subject": s, "question": f"{t} about {s} ?", "choices": ["one", "two", "three", "four"],
                     "answer": i % 4} for s in ("anatomy", "virology") for i, t in enumerate(TEST_TEXTS[:5])]
            write_jsonl(data / task.name / "test.jsonl", rows)
            write_jsonl(data / task.name / "dev.jsonl", rows)
            continue
        n = len(task.labels)
        for split, texts in (("train", TRAIN_TEXTS * 2), ("test", TEST_TEXTS[:3])):  # AG News: 30% of train
            write_jsonl(data / task.name / f"{split}.jsonl",
                        [{"text": t, task.label_column: task.labels[i % n]} for i, t in enumerate(texts)])
    out = tmp_path / "out"
    args = ["--model", str(tmp_path / "model"), "--suite", "paper", "--out", str(out), f"data_dir={data}",
            f"cache_dir={tmp_path / 'cache'}", "progress=false"]
    r = emotune(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["suite"] == "paper" and len(summary["tasks"]) == 8
    for name, t in summary["tasks"].items():
        assert (out / t["predictions"]).exists() and 0.0 <= t["metrics"]["accuracy"] <= 1.0
    assert "accuracy_macro" in summary["tasks"]["mmlu"]["metrics"]
    assert set(summary["averages"]) == {"icl_mean_accuracy", "mean_accuracy"}

    r = emotune(*args)  # resumed: everything already done
    assert r.returncode == 0 and r.stdout.count("already in") == 8

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nkind: icl\ninput_columns: [text]\ntemplates: {0: 'It is a.', 1: '<X> It is b.'}\n")
    r = emotune(str(bad), "--model", str(tmp_path / "model"), "--out", str(tmp_path / "o2"))  # a task file
    assert r.returncode == 2
    assert "bad.yaml" in r.stderr and "templates.0" in r.stderr and "Traceback" not in r.stderr
