"""`emotune eval --evaluator lm_eval` given harness groups and tags: expanded to their tasks as the harness
reports them, a group's aggregate kept, what cannot be expanded refused before the model loads.

Offline: harness task / group YAMLs written here over a local JSON file (their folder is the harness's
include path, so neither its registry nor the hub is needed) and a tiny LLaMA.
"""

from __future__ import annotations

import json

import lm_eval  # noqa: F401 - the test extra pins it: a missing harness fails here, it is not skipped
import pytest
import yaml
from eval_builders import build_llama, build_tokenizer  # noqa: F401

from emotune.cli import main as cli_main
from emotune.stats import mean_stderr

TEXTS = ["great fun", "dull film", "no plot", "superb acting", "boring", "a fine match", "markets fell"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("harness-groups")
    tok = build_tokenizer(d / "model")
    build_llama(d / "model", len(tok), seed=3)
    tasks = d / "tasks"
    tasks.mkdir()

    def task(name, n, **keys):  # a multiple-choice task over the first n rows
        data = d / f"{name}.jsonl"
        data.write_text("".join(json.dumps({"text": t, "label": i % 3}) + "\n" for i, t in enumerate(TEXTS[:n])))
        cfg = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
               "test_split": "test", "output_type": "multiple_choice",
               "doc_to_text": "Review: {{text}} It is", "doc_to_choice": ["good.", "bad.", "about money."],
               "doc_to_target": "label", "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
               "metadata": {"version": 1}, **keys}
        (tasks / f"{name}.yaml").write_text(yaml.safe_dump(cfg))

    task("mc_a", 7, tag="tiny_tag")
    task("mc_b", 4, tag=["tiny_tag", "other_tag"])
    task("mc_c", 7)
    task("mc_d", 3)
    task("mc_e", 5)
    agg = [{"metric": "acc", "aggregation": "mean", "weight_by_size": False}]
    (tasks / "inner.yaml").write_text(yaml.safe_dump({"group": "tiny_inner", "task": ["mc_d", "mc_e"],
                                                       "aggregate_metric_list": [{**agg[0], "weight_by_size": True}]}))
    (tasks / "group.yaml").write_text(yaml.safe_dump({"group": "tiny_group", "task": ["mc_c", "tiny_inner"],
                                                       "aggregate_metric_list": agg}))
    (tasks / "plain.yaml").write_text(yaml.safe_dump({"group": "tiny_plain", "task": ["mc_e"]}))  # no aggregate
    return d


def _eval(world, out, *tasks):
    return cli_main(["eval", "--evaluator", "lm_eval", "--model", str(world / "model"), "--tasks", ",".join(tasks),
                     "--out", str(out), "device=cpu", "dtype=float32", "batch_size=4"])


def test_groups_and_tags_are_expanded_to_the_tasks_the_harness_reports(world, tmp_path):
    out = tmp_path / "out"
    assert _eval(world, out, str(world / "tasks" / "group.yaml"), "tiny_tag") == 0
    summary = json.loads((out / "summary.json").read_text())["tasks"]
    assert sorted(summary) == ["mc_a", "mc_b", "mc_c", "mc_d", "mc_e", "tiny_group", "tiny_inner"]
    sizes = {"mc_a": 7, "mc_b": 4, "mc_c": 7, "mc_d": 3, "mc_e": 5}
    acc = {}
    for name, n in sizes.items():
        r = summary[name]
        samples = [json.loads(line) for line in (out / r["predictions"]).read_text().splitlines()]
        assert r["n_examples"] == n == len(samples)
        acc[name] = sum(s["acc"] for s in samples) / n
        assert r["metrics"]["acc"] == pytest.approx(acc[name])
        assert r["metrics"]["acc_stderr"] == pytest.approx(mean_stderr([s["acc"] for s in samples]))
    assert summary["mc_a"]["settings"]["harness_tag"] == "tiny_tag" and summary["mc_c"]["settings"].get("harness_tag") is None
    # the aggregates, recomputed here (the harness aggregates over a group's leaf tasks): inner weighted by
    # size, outer the plain mean
    assert summary["tiny_inner"]["metrics"]["acc"] == pytest.approx((3 * acc["mc_d"] + 5 * acc["mc_e"]) / 8)
    assert summary["tiny_group"]["metrics"]["acc"] == pytest.approx((acc["mc_c"] + acc["mc_d"] + acc["mc_e"]) / 3)
    assert summary["tiny_group"]["n_examples"] == 15 and summary["tiny_group"]["predictions"] is None
    assert summary["tiny_group"]["settings"]["subtasks"] == ["mc_c", "tiny_inner"]

    # results.json: the harness's own, in 0.4.13's schema (every result with its name, alias, sample_len)
    from lm_eval.result_schema import EvalResults, _TaskMetrics

    res = json.loads((out / "results.json").read_text())
    assert set(res) <= set(EvalResults.__annotations__)
    assert set(res["results"]) == set(summary) and set(res["groups"]) == {"tiny_group", "tiny_inner"}
    for name, entry in res["results"].items():
        assert _TaskMetrics.__required_keys__ <= set(entry) and entry["name"] == name

    # a later run into the same folder keeps them, in both files
    assert _eval(world, out, str(world / "tasks" / "plain.yaml")) == 0  # a group without aggregate: its tasks
    summary = json.loads((out / "summary.json").read_text())["tasks"]
    assert "tiny_plain" not in summary and summary["mc_e"]["settings"]["harness_group"] == "tiny_plain"
    res = json.loads((out / "results.json").read_text())
    # the harness lists the plain group with no metric; the earlier tasks and groups are kept
    assert set(res["results"]) == {*summary, "tiny_plain"} and not any("," in k for k in res["results"]["tiny_plain"])
    assert set(res["group_subtasks"]) >= {"tiny_group", "tiny_inner", "tiny_plain"}
    for name in summary:
        assert _TaskMetrics.__required_keys__ <= set(res["results"][name])


@pytest.mark.parametrize("given, words", [
    (("group.yaml", "mc_e"), ["'mc_e'", "'tiny_group'", "'mc_e'"]),  # a task reached twice
    (("group.yaml", "tiny_tag", "mc_b"), ["'mc_b'", "tiny_tag"]),
    (("broken.yaml",), ["broken.yaml", "no_such_member"]),  # a group whose member the harness cannot build
])
def test_what_cannot_be_expanded_is_refused_before_the_model_loads(world, tmp_path, capfd, given, words):
    (world / "tasks" / "broken.yaml").write_text(yaml.safe_dump({"group": "tiny_broken", "task": ["no_such_member"]}))
    try:
        tasks = [str(world / "tasks" / g) if g.endswith(".yaml") else g for g in given]
        capfd.readouterr()
        rc = _eval(world, tmp_path / "out", *tasks)
        err = capfd.readouterr().err.strip()
    finally:
        (world / "tasks" / "broken.yaml").unlink()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert all(w in err for w in words), err
    assert not (tmp_path / "out").exists()


def test_the_registry_is_indexed_only_for_names_the_folders_do_not_define(tmp_path):
    """The harness's registry index takes 15-60 s: runs whose names (and their groups' members) are all
    defined next to the given files skip it; a group file listing a registry task needs it; a member
    nothing defines is refused naming the group file (an unrelated broken group in the folder is not)."""
    from emotune.errors import EmotuneError
    from emotune.eval.harness import check_registry_names
    from emotune.tasks.harness import harness_task

    (tmp_path / "t.yaml").write_text(yaml.safe_dump({"task": "tiny_t", "dataset_path": "json", "tag": "tiny_tags"}))
    (tmp_path / "own.yaml").write_text(yaml.safe_dump({"group": "tiny_own", "task": ["tiny_t"]}))
    (tmp_path / "mixed.yaml").write_text(yaml.safe_dump({"group": "tiny_mixed", "task": ["tiny_own", "arc_easy"]}))
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump({"group": "tiny_broken", "task": ["tiny_t", "no_such_member"]}))
    assert check_registry_names([harness_task(str(tmp_path / "own.yaml")), harness_task("tiny_tags")]) is False
    assert check_registry_names([harness_task(str(tmp_path / "mixed.yaml"))]) is True
    with pytest.raises(EmotuneError, match=r"broken\.yaml: harness group names task 'no_such_member'"):
        check_registry_names([harness_task(str(tmp_path / "broken.yaml"))])
    with pytest.raises(EmotuneError, match="unknown harness task 'no_such_task'"):
        check_registry_names([harness_task(str(tmp_path / "own.yaml")), harness_task("no_such_task")])
