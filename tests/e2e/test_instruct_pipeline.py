"""`emotune pipeline` with an instruct suite and a `pairwise:` section, end to end on the CPU: two tiny
LLaMA runs instruction-tuned on DeepSpeed ZeRO-3 (MLE and EMO), each checkpoint's responses in AlpacaEval's
format by the real `emotune eval`, the MLE-vs-EMO judge job once per step, the report's pairwise section."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from instruct_builders import constant_judge, instruct_rows
from train_builders import REPO, alpaca_rows, run_config, tiny_setup


@pytest.mark.e2e
def test_instruct_pipeline_judges_each_step_once(tmp_path):
    setup = tiny_setup(tmp_path / "setup")
    from transformers import AutoTokenizer

    constant_judge(tmp_path / "judge", AutoTokenizer.from_pretrained(setup["model"]), " A")
    (tmp_path / "alpaca.jsonl").write_text("".join(json.dumps(r) + "\n" for r in alpaca_rows(48)))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in instruct_rows(4)))
    task = {"name": "alpaca_eval", "kind": "instruct", "test_split": "eval",
            "dataset": {"data_files": {"eval": str(tmp_path / "eval.jsonl")}}, "options": {"max_new_tokens": 8}}
    (tmp_path / "alpaca_eval.yaml").write_text(yaml.safe_dump(task))
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump([str(tmp_path / "alpaca_eval.yaml")]))
    train = run_config(setup, tmp_path / "unused", max_steps=2, save_steps=2, learning_rate=3e-3,
                       data={"format": "instruction", "train_files": [str(tmp_path / "alpaca.jsonl")], "max_length": 200,
                             "validation_split_percentage": 10})
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(train))
    pipe = {"run_dir": str(tmp_path / "runs"),
            "runs": [{"name": "{objective.name}", "matrix": {"objective.name": ["mle", "emo"]},
                      "train": {"config": str(tmp_path / "train.yaml")}}],
            "eval": {"suite": str(tmp_path / "suite.yaml"), "poll": 1, "lease_ttl": 60, "eval_args": ["device=cpu"]},
            "pairwise": [{"a": "emo", "b": "mle", "judge": str(tmp_path / "judge"), "format": "plain"}]}
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(pipe))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO), EMOTUNE_CACHE=str(tmp_path / "cache"))
    res = subprocess.run([sys.executable, "-m", "emotune.cli", "pipeline", str(tmp_path / "pipeline.yaml")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-4000:]
    emo = tmp_path / "runs" / "emo"
    outputs = json.loads(next((emo / "eval").rglob("alpaca_eval.outputs.json")).read_text())
    assert [set(r) for r in outputs] == [{"instruction", "output", "generator", "dataset"}] * 4
    assert "pairwise emo-vs-mle step 2 (plain): finished win 0 tie 4 lose 0" in res.stdout
    attempts = list((emo / "eval" / "pairwise").rglob("attempts.jsonl"))
    assert len(attempts) == 1 and len(attempts[0].read_text().splitlines()) == 1  # judged once
    md = (tmp_path / "runs" / "report" / "results.md").read_text()
    assert "## Pairwise judgments (A vs B)" in md and "| emo-vs-mle | judge (plain) | 2 | 0 | 4 | 0 | 0 |" in md
