"""A reduced `make demo` (configs/pipelines/demo.yaml): the whole pipeline offline, EMO against MLE.

Less data, one seed, fewer evaluation examples; everything else (synthetic language, sentencepiece
tokenizer, MLE pre-training, ZeRO-3 fine-tuning on 2 ranks, ICL + oracle evaluation of every
checkpoint, calibration at the branch points, the report) is the real demo.
"""

import math
import re

import pytest

pytestmark = pytest.mark.e2e


def test_reduced_demo_end_to_end(installed):
    """`emotune demo` of the installed wheel (tests/installed_venv.py), from an empty directory."""
    emotune = installed
    overrides = [
        # 260 test texts: MAUVE's protocol takes its 256 windows from document starts of the held-out text
        'prepare.0=[emotune, synth, runs/demo/data, --n-pretrain, "1500", --n-finetune, "400", --n-valid, "40",'
        ' --n-test, "260", --n-icl-index, "100", --n-icl-test, "24"]',
        "runs.0.train.overrides=[num_train_epochs=2]",
        "runs.1.matrix.seed=[0]",
        "eval.eval_args=[data_dir=runs/demo/data, limit=24, progress=false]",
        "eval.poll=0.5",  # the next evaluation starts sooner (the shipped 2 s suits minutes-long jobs)
    ]
    res = emotune("emotune", "demo", *overrides, timeout=900)  # the shipped config, an empty working directory
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    out = res.stdout
    assert "emotune pipeline: report runs/demo/report/report.html" in out
    assert (emotune.work / "runs/demo/report/report.html").stat().st_size > 10_000
    # The report leads with MLE vs EMO on the oracle metrics and MAUVE, its sample count shown.
    headline = out.split("## Headline: objectives compared")[1].split("## ")[0]
    assert headline.splitlines()[2].startswith("| Objective | seeds | MAUVE ↑ | PPL_oracle ↓ | reverse CE ↓ |")
    assert "MAUVE: 256 prefixes × 5 sampling runs per checkpoint, the reference against the data's own text (ceiling)" in headline
    # The pooled table: one row per objective, every oracle metric measured and finite.
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| (MLE|EMO) \| 1 \|.*$", out, re.M)}
    assert set(rows) == {"MLE", "EMO"}, out[-3000:]
    header = next(line for line in out.splitlines() if line.startswith("| Objective | runs |"))
    for key in ("ppl_test", "ppl_oracle", "forward_ce", "reverse_ce", "mauve", "synthetic_topic accuracy"):
        assert key in header
    for row in rows.values():
        cells = [c.strip() for c in row.strip("|").split("|")][2:]
        values = [float(re.split(r" \(se | ± ", c)[0]) for c in cells]  # a metric's standard error sits in its cell
        assert all(math.isfinite(v) for v in values) and len(values) >= 6
    # What reproduced (one seed: directions only, never a verdict), accuracy against its Bayes ceiling, and the
    # calibration table with EMO's population optimum, all from the evaluated numbers.
    verdict = out.split("## What reproduced here")[1].split("\n## ")[0]
    assert "no spread to judge the difference by" in verdict and "reproduces" not in verdict
    assert "Bayes-optimal (%)" in out.split("## In-context accuracy against its Bayes ceiling")[1]
    calib = out.split("## Calibration at the language's branch points")[1].split("\n## ")[0]
    assert "| Context | next | language | MLE | EMO | EMO-1 optimum | EMO-2 optimum |" in calib
    end = next(line for line in calib.splitlines() if "| end of text |" in line)
    assert [c.strip() for c in end.strip("|").split("|")][2] == "20.0"  # the language ends 20 % after "."
    # Both fine-tuning runs started from the pre-trained checkpoint and were evaluated at every checkpoint.
    for run in ("mle-seed0", "emo-seed0"):
        assert "model.name_or_path=runs/demo/pretrain/checkpoint-" in res.stderr
        assert list((emotune.work / "runs/demo" / run).glob("checkpoint-*/COMPLETE"))
