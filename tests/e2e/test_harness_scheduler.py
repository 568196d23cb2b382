"""lm-evaluation-harness as the scheduler's second evaluator, offline, on tiny checkpoints.

A harness multiple-choice task YAML over a local JSON file is evaluated by `emotune watch --once` on two
checkpoints (one job per (checkpoint, task), exactly once; the harness's metrics and stderrs in the store
and in `emotune results`), and the same task as our own task file through our evaluator gives the same
accuracy where the two protocols coincide: zero-shot, our `scoring: continuation` (the label words' NLL
after the candidates' common token prefix) and a harness `doc_to_text` whose context + continuation is our
candidate prompt string (our ICE block with no demos is "\\n"). The labels have unequal token lengths,
so OpenICL's whole-sequence rule (`scoring: full`) and the harness's `acc_norm` may pick other labels:
the test prints all four accuracies. The harness's `acc_stderr` is our formula
(emotune.stats) on the same predictions, and our results.json has the keys of the harness-written one.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml
from scheduling_helpers import PY, env, write_model_checkpoint
from test_eval_fixtures import TEST_TEXTS, TRAIN_TEXTS, build_llama, build_tokenizer, one_torch_thread  # noqa: F401

from emotune.scheduling.store import Store, default_store_path
from emotune.stats import mean_stderr

pytest.importorskip("lm_eval")

ROWS = [{"text": t, "label": i % 2} for i, t in enumerate(TRAIN_TEXTS[:10] + TEST_TEXTS)]
SCHEMA_KEYS = {"results", "versions", "n-shot", "configs", "higher_is_better", "n-samples"}


def _tasks(tmp_path):
    data = tmp_path / "data" / "test.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    harness = tmp_path / "harness" / "tiny_mc.yaml"
    harness.parent.mkdir()
    harness.write_text(yaml.safe_dump({
        "task": "tiny_mc", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test", "output_type": "multiple_choice",
        "doc_to_text": "\nReview: {{text}} It is", "doc_to_choice": ["positive.", "negative and boring."], "doc_to_target": "label",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0}}))
    ours = tmp_path / "ours.yaml"
    ours.write_text(yaml.safe_dump({
        "name": "tiny_mc", "kind": "icl", "dataset": {"data_files": {"train": str(data), "test": str(data)}},
        "input_columns": ["text"], "label_column": "label", "ice_num": 0, "options": {"scoring": "continuation"},
        "templates": {0: "Review: <X> It is positive.", 1: "Review: <X> It is negative and boring."}}))
    suite = tmp_path / "harness-suite.yaml"
    suite.write_text(yaml.safe_dump({"evaluator": "lm_eval", "tasks": [str(harness)]}))
    return harness, ours, suite


def _cli(*args, timeout=600):
    res = subprocess.run([PY, "-m", "emotune.launch.cli", *args], env=env(), capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res


def _ours(*args):
    from emotune.eval.cli import main  # in this process: no second interpreter start

    assert main(list(args)) == 0


@pytest.mark.e2e
def test_harness_suite_through_the_scheduler_matches_our_evaluator(tmp_path):
    harness, ours, suite = _tasks(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    tok = build_tokenizer(tmp_path / "tok")
    for step, seed in ((1, 0), (2, 5)):
        write_model_checkpoint(run, step, build_llama(None, len(tok), seed=seed), tok)

    _cli("watch", str(run), "--suite", str(suite), "--once", "--poll", "0.5", "--jobs", "2")
    again = _cli("watch", str(run), "--suite", str(suite), "--once", "--poll", "0.5")  # nothing left to do
    assert "launched" not in again.stderr
    rows = Store(default_store_path(run)).rows()
    assert [(r.step, r.task, r.status, r.attempts) for r in rows] == [(1, "tiny_mc", "finished", 1),
                                                                      (2, "tiny_mc", "finished", 1)]
    table = _cli("results", str(run)).stdout
    comparison = []
    for r in rows:
        out = tmp_path / "run" / "eval" / "harness-suite" / f"step-{r.step}-{r.fingerprint[:8]}" / "tiny_mc"
        assert (out / "eval.log").read_text().count("\n$ ") == 1  # evaluated exactly once
        summary = json.loads((out / "summary.json").read_text())["tasks"]["tiny_mc"]
        assert r.metrics == summary["metrics"] and set(r.metrics) == {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}
        assert r.n_examples == len(ROWS) and summary["kind"] == "lm_eval"
        assert f"{100 * r.metrics['acc']:.2f} ± {100 * r.metrics['acc_stderr']:.2f}" in table
        samples = [json.loads(line) for line in (out / "tiny_mc.samples.jsonl").read_text().splitlines()]
        assert r.metrics["acc_stderr"] == pytest.approx(mean_stderr([s["acc"] for s in samples]), rel=1e-12)

        # the same task, our evaluator, on the same checkpoint
        mine = tmp_path / f"ours-{r.step}"
        _ours("--model", r.checkpoint, "--tasks", str(ours), "--out", str(mine), "progress=false")
        our = json.loads((mine / "summary.json").read_text())["tasks"]["tiny_mc"]
        preds = [json.loads(line) for line in (mine / "tiny_mc.predictions.jsonl").read_text().splitlines()]
        assert our["metrics"]["accuracy"] == r.metrics["acc"]
        assert our["metrics"]["accuracy_stderr"] == pytest.approx(r.metrics["acc_stderr"], rel=1e-12)
        for p, s in zip(preds, samples):  # per document: the same prompts, the same choice, the same margins
            ll = [x[0] for x in s["filtered_resps"]]
            assert [a[0] + a[1] for a in s["arguments"]] == [p["prompt_prefix"] + p["prompt_endings"][k] for k in ("0", "1")]
            assert p["correct"] == bool(s["acc"])
            assert ll[1] - ll[0] == pytest.approx(-(p["scores"]["1"] - p["scores"]["0"]), abs=1e-4)
        full = tmp_path / f"ours-full-{r.step}"
        _ours("--model", r.checkpoint, "--tasks", str(ours), "--out", str(full), "scoring=full", "progress=false")
        full_acc = json.loads((full / "summary.json").read_text())["tasks"]["tiny_mc"]["metrics"]["accuracy"]
        comparison.append((r.step, r.metrics["acc"], r.metrics["acc_norm"], our["metrics"]["accuracy"], full_acc))

        # our results.json has the keys of the harness-written one, and the harness's table reads both
        from lm_eval.utils import make_table

        theirs, ours_h = (json.loads((d / "results.json").read_text()) for d in (out, mine))
        assert SCHEMA_KEYS <= set(theirs) and SCHEMA_KEYS <= set(ours_h)
        assert set(ours_h["results"]["tiny_mc"]) == set(theirs["results"]["tiny_mc"]) - {"name", "sample_len",
                                                                                        "acc_norm,none", "acc_norm_stderr,none"}
        assert ours_h["results"]["tiny_mc"]["acc,none"] == theirs["results"]["tiny_mc"]["acc,none"]
        assert ours_h["n-samples"] == theirs["n-samples"] and ours_h["n-shot"] == theirs["n-shot"]
        assert set(ours_h["higher_is_better"]["tiny_mc"]) <= set(theirs["higher_is_better"]["tiny_mc"])
        assert "tiny_mc" in make_table(ours_h) and "tiny_mc" in make_table(theirs)
    print("step, harness acc, harness acc_norm, ours continuation, ours full:", comparison)
