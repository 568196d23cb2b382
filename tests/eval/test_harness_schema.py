"""Our summary in lm-evaluation-harness's results schema, read back by the harness's own table writer;
the harness's metric names mapped into the store's; harness suites read by the scheduler."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import lm_eval.utils  # the test extra pins lm_eval==0.4.13: without it these tests fail, they are not skipped
import pytest
import yaml
from lm_eval.result_schema import EvalResults, _TaskMetrics

from emotune.eval.harness import harness_metrics, metric_name
from emotune.eval.harness_schema import to_harness_results
from emotune.eval.summary import TaskResult
from emotune.stats import with_stderr

SCHEMA_KEYS = {"results", "versions", "n-shot", "configs", "higher_is_better", "n-samples"}


def _summary():
    icl = TaskResult("sst2", "icl", with_stderr({"accuracy": 0.875}, {"accuracy": 8}), 8, "sst2.predictions.jsonl",
                     settings={"ice_num": 8, "scoring": "full", "limit": None})
    mmlu = TaskResult("mmlu", "mmlu", with_stderr({"accuracy": 0.5, "accuracy_macro": 0.5, "subject/law": 0.5},
                                                  {"accuracy": 4, "subject/law": 4}), 4, settings={"shots": 5})
    gen = TaskResult("gen", "generation", {"mauve": 0.9, "mauve_std": 0.01, "ppl_test": 12.0}, 10)
    return {"model": "m", "suite": "s", "emotune_version": "0", "tasks": {r.task: asdict(r) for r in (icl, mmlu, gen)}}


def test_our_summary_in_the_harness_schema_reads_with_its_make_table():
    utils = lm_eval.utils
    out = json.loads(json.dumps(to_harness_results(_summary())))  # what results.json holds
    assert SCHEMA_KEYS <= set(out) and set(out) - {"emotune_version"} <= set(EvalResults.__annotations__)
    for name, entry in out["results"].items():  # 0.4.13's per-result keys, then `metric,filter` numbers
        assert _TaskMetrics.__required_keys__ <= set(entry) and entry["name"] == entry["alias"] == name
        assert all(isinstance(v, float) for k, v in entry.items() if "," in k)
    assert out["results"]["mmlu"]["sample_len"] == 4 and out["results"]["gen"]["sample_len"] == 10
    sst2 = out["results"]["sst2"]
    assert sst2["alias"] == "sst2" and sst2["acc,none"] == 0.875
    assert sst2["acc_stderr,none"] == pytest.approx(math.sqrt(0.875 * 0.125 / 7))  # the harness's formula
    assert out["n-shot"] == {"sst2": 8, "mmlu": 5, "gen": 0}
    assert out["n-samples"]["sst2"] == {"original": 8, "effective": 8}
    assert out["higher_is_better"]["sst2"] == {"acc": True}
    assert out["higher_is_better"]["gen"]["ppl_test"] is False and out["higher_is_better"]["gen"]["mauve"] is True
    assert out["results"]["mmlu"]["subject/law_stderr,none"] == pytest.approx(math.sqrt(0.25 / 3))
    table = utils.make_table(out)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    sst2_row = next(r for r in rows if r[0] == "sst2")
    assert sst2_row[1:6] == ["emotune-2", "none", "8", "acc", "↑"] and sst2_row[7] == "±", table
    assert float(sst2_row[6]) == 0.875 and float(sst2_row[8]) == 0.125, table
    assert any(r[4] == "ppl_test" and r[5] == "↓" for r in rows) and any(r[4] == "subject/law" and r[5] == "↑" for r in rows)
    assert any(r[4] == "mauve_std" and r[5] == "" for r in rows), table


def test_harness_metric_names():
    assert metric_name("acc,none") == "acc" and metric_name("acc_stderr,none") == "acc_stderr"
    assert metric_name("exact_match,strict-match") == "exact_match/strict-match"
    assert metric_name("exact_match_stderr,strict-match") == "exact_match/strict-match_stderr"
    assert metric_name("alias") is None and metric_name("sample_len") is None
    got = harness_metrics({"name": "t", "alias": "t", "sample_len": 6, "acc,none": 0.5, "acc_stderr,none": "N/A",
                           "acc_norm,none": 0.25, "acc_norm_stderr,none": 0.1})
    assert got == {"acc": 0.5, "acc_norm": 0.25, "acc_norm_stderr": 0.1}


def test_harness_suites_for_the_scheduler(tmp_path, monkeypatch):
    from emotune.errors import EmotuneError
    from emotune.scheduling.scheduler import resolve_suite
    from emotune.tasks.suites import load_suite

    task = tmp_path / "h.yaml"
    task.write_text("task: tiny_mc\ndataset_path: json\nprocess_docs: !function utils.process\n")
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"evaluator": "lm_eval", "tasks": ["h.yaml", "arc_easy"]}))
    s = resolve_suite(str(suite))
    assert s.evaluator == "lm_eval" and s.labels == ("tiny_mc", "arc_easy")
    assert s.tasks == (str(task.resolve()), "arc_easy")
    monkeypatch.chdir(tmp_path.parent)  # paths do not make the version, the file's text does
    assert resolve_suite(str(suite)).version == s.version
    assert resolve_suite(str(suite), ["num_fewshot=1"]).version != s.version
    task.write_text("task: tiny_mc\ndataset_path: json\n# edited\n")
    assert resolve_suite(str(suite)).version != s.version
    shipped = resolve_suite("harness")
    assert shipped.evaluator == "lm_eval" and "arc_easy" in shipped.labels
    with pytest.raises(EmotuneError, match="lm-evaluation-harness"):
        load_suite("harness")  # our evaluator refuses it in one line, naming the way to run it


def test_harness_suites_hold_only_what_the_harness_reports_a_result_under(tmp_path):
    """A scheduled job records the result its evaluator reports under the member's name: a registry group
    that aggregates (mmlu) or a group file that does is one; a tag (ai2_arc) or a group without an
    aggregate is refused when the suite is read, in one line, not after every checkpoint's evaluation."""
    from emotune.errors import EmotuneError
    from emotune.scheduling.scheduler import resolve_suite
    from emotune.tasks.harness import registry_kinds

    assert registry_kinds(["arc_easy", "ai2_arc", "mmlu", "mmlu_anatomy"]) == {
        "arc_easy": ("task", True), "ai2_arc": ("tag", False), "mmlu": ("group", True), "mmlu_anatomy": ("task", True)}
    (tmp_path / "a.yaml").write_text("task: tiny_a\ndataset_path: json\n")
    (tmp_path / "g.yaml").write_text(yaml.safe_dump({"group": "tiny_g", "task": ["tiny_a"],
                                                     "aggregate_metric_list": [{"metric": "acc"}]}))
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump({"group": "tiny_plain", "task": ["tiny_a"]}))
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"evaluator": "lm_eval", "tasks": ["g.yaml", "mmlu"]}))
    s = resolve_suite(str(suite))
    assert s.labels == ("tiny_g", "mmlu")
    (tmp_path / "a.yaml").write_text("task: tiny_a\ndataset_path: json\n# edited\n")
    assert resolve_suite(str(suite)).version != s.version  # a member of the group file changed
    for member, words in (("ai2_arc", ["tag", "'ai2_arc'"]), ("plain.yaml", ["group", "'tiny_plain'", "aggregate"])):
        suite.write_text(yaml.safe_dump({"evaluator": "lm_eval", "tasks": ["arc_easy", member]}))
        with pytest.raises(EmotuneError) as err:
            resolve_suite(str(suite))
        assert str(suite) in str(err.value) and all(w in str(err.value) for w in words), err.value


def test_the_shipped_harness_suite_names_tasks_of_the_pinned_harness():
    """configs/eval/suites.yaml's `harness` suite: every member is a `task:` of a YAML file in lm_eval's own
    task folder (read as text: building the harness's index takes 15-60 s on a loaded machine)."""
    import re
    from pathlib import Path

    import lm_eval.tasks as tasks

    from emotune.scheduling.scheduler import resolve_suite

    wanted = set(resolve_suite("harness").labels)
    found = set()
    root = Path(tasks.__file__).parent
    for f in [*root.glob("*/*.yaml"), *root.glob("*/*/*.yaml")]:  # where the common tasks live
        found |= set(re.findall(r"^task: *['\"]?([\w.-]+)['\"]? *$", f.read_text(errors="replace"), re.M)) & wanted
    assert found == wanted


def test_no_harness_test_skips_when_the_harness_is_missing():
    """The test extra pins lm_eval==0.4.13, so a test that needs it imports it: an environment without it
    fails those tests instead of passing with them silently skipped."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    skipping = [str(p.relative_to(root)) for p in root.rglob("*.py")
                if 'importorskip("lm_eval' in p.read_text() and p != Path(__file__).resolve()]
    assert skipping == []
