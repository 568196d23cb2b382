"""`emotune pipeline configs/pipelines/distill.yaml`, the shipped distillation demo, end to end at a fraction of its
size: the synthetic language and its tokenizer, the MLE teacher, a KD student and a dense-target EMO student
distilled from it (the teacher frozen in the students' ZeRO-3 step, its tokenizer checked against theirs, its LM
head EMO's cost), the oracle evaluation of all three and the report. Only sizes are overridden: less data, a few
steps, one seed, fewer evaluation examples."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
OVERRIDES = [
    # 260 test texts: MAUVE's protocol takes its 256 windows from document starts of the held-out text
    'prepare.0=[emotune, synth, runs/distill/data, --n-pretrain, "200", --n-finetune, "20", --n-valid, "16",'
    ' --n-test, "260", --n-icl-index, "20", --n-icl-test, "8"]',
    # the teacher's own overrides, kept, and a step budget
    'runs.0.train.overrides=[model.tokenizer_name_or_path=runs/distill/data/tokenizer,'
    ' "data.train_files=[runs/distill/data/pretrain.txt]", "data.validation_files=[runs/distill/data/valid.txt]",'
    ' max_steps=3]',
    "runs.1.matrix={objective.name: [kd, emo], seed: [0]}",
    'runs.1.train.overrides=["teacher.model={run:teacher}", "objective.cost_source={run:teacher}", max_steps=2]',
    "eval.eval_args=[data_dir=runs/distill/data, limit=8, progress=false]",
    "eval.poll=0.5",  # the next evaluation starts sooner (the shipped 2 s suits minutes-long jobs)
]


@pytest.mark.e2e
def test_distill_pipeline_end_to_end(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", EMOTUNE_CACHE=str(tmp_path / "cache"),
               OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-m", "emotune.cli", "pipeline", "configs/pipelines/distill.yaml",
                          *OVERRIDES], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    runs = tmp_path / "runs" / "distill"

    # Both students distilled from the teacher's checkpoint, with the objective the matrix gave them.
    teacher_ckpt = "runs/distill/teacher/checkpoint-3"
    for run, name in (("kd-seed0", "kd"), ("emo-seed0", "emo")):
        cfg = yaml.safe_load((runs / run / "config.yaml").read_text())
        assert cfg["teacher"]["model"] == teacher_ckpt and cfg["objective"]["name"] == name, cfg
        assert (runs / run / "checkpoint-2" / "COMPLETE").is_file()
        log = [json.loads(line) for line in (runs / run / "train_log.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in log if "loss" in r]
        assert losses and all(math.isfinite(x) for x in losses)
        assert any("demd" in r for r in log) == (name == "emo")  # dense-target EMO logs its generalised DEMD
    assert f"teacher.model={teacher_ckpt}" in res.stderr

    # The report: the teacher (pre-trained with MLE) as the reference row, then EMO and KD, every cell finite.
    assert "emotune pipeline: report runs/distill/report/report.html" in res.stdout
    assert (runs / "report" / "report.html").stat().st_size > 10_000
    headline = res.stdout.split("## Headline: objectives compared")[1].split("## ")[0]
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| (MLE|EMO|KD \(forward KL\)) \| 1 \|(.*)$", headline, re.M)}
    assert set(rows) == {"MLE", "EMO", "KD (forward KL)"}, headline
    for row in rows.values():
        values = [float(c.strip().strip("*")) for c in row.strip("|").split("|")]
        assert len(values) == 5 and all(math.isfinite(v) for v in values), row
