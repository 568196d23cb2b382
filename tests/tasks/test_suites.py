"""The one suite resolver (emotune/tasks/suites.py): `emotune eval --suite`, the scheduler and the harness
path read a suite the same way, a shipped name or a suite file; what each may say and refuse."""

from __future__ import annotations

import argparse
import json

import pytest

from emotune.errors import EmotuneError
from emotune.eval.cli import _evaluator, _harness_specs, _tasks
from emotune.resources import shipped
from emotune.scheduling.scheduler import resolve_suite
from emotune.tasks.suites import find_suite, load_suite, suite_members

TASK = {"name": "a", "kind": "icl", "dataset": {"data_files": {"train": "x.jsonl", "test": "y.jsonl"}},
        "input_columns": ["text"], "templates": {0: "<X> no", 1: "<X> yes"}}


def _eval_args(suite: str, **kw) -> argparse.Namespace:
    return argparse.Namespace(suite=suite, tasks=kw.get("tasks"), evaluator=kw.get("evaluator"))


@pytest.mark.parametrize("name", ["paper", "demo", "tiny_suite", "configs/eval/suites/tiny_instruct_suite.yaml"])
def test_the_evaluator_and_the_scheduler_read_one_suite_alike(name):
    suite = resolve_suite(name)
    tasks = _tasks(_eval_args(name), [])
    assert [t.name for t in tasks] == list(suite.labels) == [t.name for t in load_suite(name)]
    assert _evaluator(_eval_args(name)) == suite.evaluator == "emotune"


def test_a_suite_file_by_its_path_and_its_task_files_relative_to_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "a.yaml").write_text(json.dumps(TASK))
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "mine.yaml").write_text(json.dumps(["../tasks/a.yaml", "sst2"]))
    found = find_suite("suites/mine.yaml")
    assert found.file and found.name == "mine" and found.base.resolve() == tmp_path / "suites"
    members = suite_members(found)
    assert [m.spec for m in members] == [str((tmp_path / "tasks" / "a.yaml").resolve()), "sst2"]
    assert [m.task.name for m in members] == ["a", "sst2"] and [m.shards for m in members] == [1, 1]
    (tmp_path / "paper.yaml").write_text(json.dumps(["sst2"]))
    assert [m.task.name for m in suite_members(find_suite("paper.yaml"))] == ["sst2"]  # the user's file
    assert not find_suite("paper").file and find_suite("paper").base == shipped("eval")  # the shipped suite
    assert find_suite("tiny_suite").file  # a shipped suite file, by its bare name


def test_harness_suites_from_the_one_resolver(tmp_path):
    (tmp_path / "h.yaml").write_text(json.dumps({"evaluator": "lm_eval", "tasks": ["arc_easy", "boolq"]}))
    for name in ("harness", str(tmp_path / "h.yaml")):
        assert find_suite(name).evaluator == "lm_eval" and _evaluator(_eval_args(name)) == "lm_eval"
        with pytest.raises(EmotuneError, match="is run by lm-evaluation-harness"):
            load_suite(name)  # our evaluator refuses it in one line
    assert _harness_specs(_eval_args(str(tmp_path / "h.yaml"), tasks="piqa"), []) == ["arc_easy", "boolq", "piqa"]
    with pytest.raises(EmotuneError, match="suite 'paper' is not a harness suite"):
        _harness_specs(_eval_args("paper"), [])


@pytest.mark.parametrize("entry,message", [
    ([], "a suite must be a non-empty list of task names or task file paths"),
    ({"tasks": ["sst2"], "shard": 2}, "unknown key 'shard'"),
    ({"tasks": ["sst2"], "evaluator": "openicl"}, "key 'evaluator' must be one of emotune, lm_eval"),
    ([{"task": "sst2", "shard": 2}], "expected a task name or {task: NAME, shards: N}"),
    ([{"task": "sst2", "shards": 0}], "key 'shards' must be a positive integer"),
    ([{"task": "synthetic_oracle", "shards": 2}], "a kind: oracle task cannot be sharded"),
    (["sst2", "sst2"], "a task name appears twice"),
])
def test_a_bad_suite_file_is_one_line_naming_it(tmp_path, entry, message):
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(entry))
    with pytest.raises(EmotuneError, match=message) as err:
        resolve_suite(str(path))
    assert ("bad" in str(err.value)) and "\n" not in str(err.value)


def test_an_unknown_suite_names_the_shipped_ones():
    with pytest.raises(EmotuneError, match=r"suites.yaml: unknown suite 'nope' \(known: icl, mmlu, paper"):
        find_suite("nope")
