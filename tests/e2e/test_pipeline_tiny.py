"""`emotune pipeline configs/pipelines/tiny.yaml` end to end on the CPU: DeepSpeed ZeRO-3 training of a tiny
LLaMA with EMO, the scheduler beside it evaluating each checkpoint with the real `emotune eval`, the report."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
def test_pipeline_tiny_end_to_end(tmp_path):
    run = tmp_path / "run"
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "EMOTUNE_CACHE": str(tmp_path / "cache")}
    res = subprocess.run([sys.executable, "-m", "emotune.cli", "pipeline", "configs/pipelines/tiny.yaml",
                          f"run_dir={run}", "eval.poll=1",
                          "train.overrides=[max_steps=6, save_steps=3, resume=null, data.max_eval_samples=8, "
                          "logging_steps=1, disable_tqdm=true]"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]

    out = subprocess.run([sys.executable, "-m", "emotune.cli", "results", str(run), "--json"], cwd=REPO,
                         env=env, capture_output=True, text=True, check=True).stdout
    rows = json.loads(out)
    assert [(r["step"], r["task"], r["status"], r["objective"]) for r in rows] == \
        [(3, "tiny_topic", "finished", "emo"), (6, "tiny_topic", "finished", "emo")]
    for r in rows:
        assert 0 <= r["metrics"]["accuracy"] <= 1 and r["n_examples"] == 12 and r["tokens_seen"] > 0
        preds = [json.loads(line) for line in open(r["predictions"])]
        assert len(preds) == 12

    report = run / "report"
    page = (report / "report.html").read_text()
    assert len(re.findall(r"<img class='plot'", page)) == 4 and page.count("data:image/png;base64,") == 4
    md = (report / "results.md").read_text()
    acc = 100 * rows[-1]["metrics"]["accuracy"]
    paper = md.split("## Results (paper layout)\n\n")[1]
    assert paper.splitlines()[0] == "| Objective | tiny_topic | Avg. |" and f"| EMO | {acc:.2f} |" in paper.replace("**", "")
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert any("demd" in rec for rec in log)  # the training curves have EMO's DEMD term to plot
    assert "emotune pipeline: report" in res.stdout
