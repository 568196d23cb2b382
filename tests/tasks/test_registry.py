"""The task-kind registry (emotune/tasks/registry.py): every entry complete, every shipped task file's kind
registered, every evaluator entry importable, and a new kind being one entry and nothing else."""

from __future__ import annotations

import textwrap
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict

from emotune.errors import EmotuneError
from emotune.eval.harness_schema import harness_name, higher_is_better
from emotune.eval.kinds import check_data, count_rows, load_entry, run_task
from emotune.eval.options import EvalOptions
from emotune.eval.resume import result_key
from emotune.eval.summary import TaskResult
from emotune.report.data import METRICS
from emotune.tasks.files import CONFIG_DIR, check_task_file, load_task, task_from_dict
from emotune.tasks.harness import HARNESS
from emotune.tasks.registry import KINDS, Kind, kind_of, shardable_kinds, task_file_kinds
from emotune.tasks.shards import check_shardable, task_metrics

EXPECTED = {"icl", "mmlu", "generation", "oracle", "instruct", HARNESS}


def test_every_kind_the_package_knows_is_registered():
    assert set(KINDS) == EXPECTED
    assert set(task_file_kinds()) == EXPECTED - {HARNESS}  # the harness's tasks are its own YAML files
    assert shardable_kinds() == ("icl", "mmlu")  # MAUVE and the oracle metrics are over all samples


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_entry_is_complete(name):
    entry = KINDS[name]
    assert entry.name == name
    assert load_entry(entry.evaluator, name).__name__ == entry.evaluator.rpartition(":")[2]
    assert all(isinstance(higher, bool) for higher in entry.metrics.values())
    assert set(entry.result_options) <= set(EvalOptions.model_fields), "a result option `emotune eval` lacks"
    if entry.schema is not None:  # a task file of ours: its schema names this kind and no other
        assert entry.schema.model_fields["kind"].annotation == Literal[name]
        assert entry.metrics, "a kind of ours reports scores with a direction"
    if entry.shards:  # a sharded task's rows are counted to split them and its metrics recomputed on merge
        assert entry.rows and callable(load_entry(entry.rows, name))
        assert task_metrics(name, [{"correct": True, "subject": "s"}, {"correct": False, "subject": "s"}])["accuracy"] == 0.5
    else:
        assert entry.rows is None
        with pytest.raises(EmotuneError, match="cannot be merged from shards"):
            task_metrics(name, [])
    for hook in (entry.rows, entry.check_data):
        assert hook is None or callable(load_entry(hook, name))
    for field in entry.result_fields:
        assert hasattr(load_task("sst2"), field)


@pytest.mark.parametrize("path", sorted((CONFIG_DIR / "tasks").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_task_file_is_of_a_registered_kind_and_fits_its_schema(path):
    task = load_task(str(path))
    assert task.kind in task_file_kinds()
    check_task_file(task)  # every key, by its kind's schema


def test_metric_directions_agree_with_the_harness_schema_and_the_report():
    for entry in KINDS.values():
        for metric, higher in entry.metrics.items():
            assert higher_is_better(harness_name(metric)) in (None, higher), (entry.name, metric)
            if metric in METRICS:
                assert METRICS[metric][1] == higher, (entry.name, metric)


def test_an_unknown_kind_is_one_line():
    with pytest.raises(EmotuneError, match=r"t.yaml: key 'kind' must be one of icl, mmlu, generation, oracle, instruct"):
        task_from_dict({"name": "t", "kind": HARNESS}, "t.yaml")
    with pytest.raises(EmotuneError, match=r"x: unknown task kind 'nope'"):
        kind_of("nope", "x")


class WordsTaskFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    kind: Literal["words"]
    text: str
    options: dict[str, Any] | None = None


def test_a_new_kind_is_one_registry_entry(tmp_path, monkeypatch):
    """A kind `words` (its evaluator counts the task's words) added by one entry: read, checked, its result
    key built, run by the evaluator's dispatch, refused as a shard job; nothing else is told about it."""
    (tmp_path / "words_kind.py").write_text(textwrap.dedent("""
        from emotune.eval.summary import TaskResult

        def run(task, model, tokenizer, out_dir, seed=None, **options):
            n = len(task.raw["text"].split())
            return TaskResult(task=task.name, kind=task.kind, metrics={"words": float(n)}, n_examples=n,
                              settings={"seed": seed, "retriever": "retriever" in options})
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(KINDS, "words", Kind("words", "words_kind:run", {"words": True}, ("seed", "limit"),
                                             WordsTaskFile))

    task = task_from_dict({"name": "w", "kind": "words", "text": "one two three"}, "w.yaml")
    check_task_file(task)
    with pytest.raises(EmotuneError, match=r"w.yaml: unknown key 'txt'"):
        check_task_file(task_from_dict({"name": "w", "kind": "words", "text": "x", "txt": "x"}, "w.yaml"))
    key = result_key(task, {"seed": 3, "limit": None, "scoring": "full"}, "fp", "float32")
    assert {k: key[k] for k in ("kind", "seed", "limit")} == {"kind": "words", "seed": 3, "limit": None}
    assert "scoring" not in key and "prompt_fit" not in key

    def no_retriever():
        raise AssertionError("a kind without `retriever` gets none")

    result = run_task(task, None, None, tmp_path, {"seed": 3, "limit": None}, no_retriever)
    assert isinstance(result, TaskResult) and result.metrics == {"words": 3.0}
    assert result.settings == {"seed": 3, "retriever": False}
    check_data(task, None)  # no data check of its own: nothing to do
    check_shardable("words", 1, "w.yaml")
    with pytest.raises(EmotuneError, match="a kind: words task cannot be sharded"):
        check_shardable("words", 2, "w.yaml")
    with pytest.raises(EmotuneError, match="a kind: words task cannot be sharded"):
        count_rows(task, None, None)


def test_an_evaluator_that_is_not_installed_is_one_line(monkeypatch):
    monkeypatch.setitem(KINDS, "icl", Kind("icl", "emotune_missing_module:run", {}, (), KINDS["icl"].schema,
                                           KINDS["icl"].read))
    task = load_task("sst2")
    with pytest.raises(EmotuneError, match=r"sst2.yaml: kind 'icl' needs emotune_missing_module.run, which is not "
                                           "available in this installation"):
        run_task(task, None, None, ".", {}, lambda: None)
