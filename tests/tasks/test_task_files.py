"""Task files and data loading: the shipped task YAMLs, local JSONL/CSV/parquet, split slices, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emotune.errors import EmotuneError
from emotune.eval.task_data import apply_slice, load_split, parse_split
from emotune.tasks.files import CONFIG_DIR, load_task, load_task_file, task_from_dict
from emotune.tasks.suites import load_suite

PAPER = {  # docs/evaluation.md, paper's tasks: hub id, config, label column, first template, number of labels
    "tweet_eval": ("tweet_eval", "emotion", "label", "<X> It is anger.", 4),
    "sst2": ("gpt3mix/sst2", None, "label", 'Review: "<X>" It is positive.', 2),
    "trec": ("trec", None, "coarse_label", '"<X>" It is about abbreviation.', 6),
    "subj": ("SetFit/subj", None, "label", "<X> It is objective.", 2),
    "cr": ("SetFit/CR", None, "label", "Review: <X> It is positive.", 2),
    "rotten_tomatoes": ("rotten_tomatoes", None, "label", "Review: <X> It is positive", 2),
    "ag_news": ("ag_news", None, "label", '"<X>" It is about world.', 4),
}


def test_shipped_tasks_follow_the_protocol():
    for name, (path, config, label_col, first, n) in PAPER.items():
        t = load_task(name)
        assert (t.kind, t.dataset["path"], t.dataset.get("name"), t.label_column) == ("icl", path, config, label_col)
        assert t.templates[t.labels[0]] == first and len(t.labels) == n and t.ice_num == 8
        assert t.input_columns == {"text": "<X>"} and t.test_split == "test"
    assert load_task("cr").labels == [1, 0] and load_task("rotten_tomatoes").labels == [1, 0]  # 1 listed first
    assert load_task("ag_news").index_split == "train[:30%]"
    for script_based in ("sst2", "trec"):
        assert load_task(script_based).dataset["revision"] == "refs/convert/parquet"
    mmlu = load_task("mmlu")
    assert (mmlu.kind, mmlu.dataset["path"], mmlu.index_split, mmlu.raw["shots"]) == ("mmlu", "cais/mmlu", "dev", 5)
    assert [t.name for t in load_suite("icl")] == list(PAPER)
    assert [t.name for t in load_suite("paper")] == [*PAPER, "mmlu"]
    assert [t.name for t in load_suite("mmlu")] == ["mmlu"]


def test_every_task_file_has_a_kind():
    for f in (CONFIG_DIR / "tasks").glob("*.yaml"):
        assert load_task_file(f).kind in ("icl", "mmlu", "generation", "oracle", "instruct")


ROWS = [{"text": f"row {i}", "label": i % 2} for i in range(10)]


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "parquet"])
def test_local_files_load_with_the_same_columns(tmp_path, suffix):
    path = tmp_path / f"test.{suffix}"
    if suffix == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif suffix == "csv":
        import pandas as pd

        pd.DataFrame(ROWS).to_csv(path, index=False)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(ROWS), path)
    task = load_task("sst2")
    assert load_split(task, "test", data_dir=tmp_path) == ROWS
    # and through dataset.data_files in the task file
    task.dataset["data_files"] = {"test": str(path)}
    got = load_split(task, "test[2:5]")
    assert got == ROWS[2:5]
    assert [task.label_key(r["label"], "row") for r in got] == [0, 1, 0]


@pytest.mark.parametrize("spec", ["train[:30%]", "train[30%:]", "train[10%:45%]", "train[3:7]", "train[:-2]"])
def test_split_slices_match_datasets(tmp_path, spec):
    import datasets

    rows = [{"text": f"t{i}", "label": i % 3} for i in range(37)]
    f = tmp_path / "train.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    expected = datasets.load_dataset("json", data_files={"train": str(f)}, split=spec,
                                     cache_dir=str(tmp_path / "hf")).to_list()
    assert apply_slice(rows, parse_split(spec, "x", "k")[1]) == expected


def write_task(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    return p


GOOD = """name: t
kind: icl
dataset: {data_files: {train: DATA, test: DATA}}
input_columns: [text]
label_column: label
templates:
  0: "<X> It is bad."
  1: "<X> It is good."
"""


def test_bad_task_files_name_the_file_and_key(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    good = GOOD.replace("DATA", str(data))
    p = write_task(tmp_path, good.replace('1: "<X> It is good."', '1: "It is good."'))
    with pytest.raises(EmotuneError, match=r"bad\.yaml.*templates\.1.*<X>"):
        load_task_file(p)
    p = write_task(tmp_path, good.replace("kind: icl", "kind: cloze"))
    with pytest.raises(EmotuneError, match=r"bad\.yaml.*'kind'"):
        load_task_file(p)
    p = write_task(tmp_path, good.replace("input_columns: [text]\n", ""))
    with pytest.raises(EmotuneError, match=r"bad\.yaml.*'input_columns'"):
        load_task_file(p)
    p = write_task(tmp_path, "name: [unclosed")
    with pytest.raises(EmotuneError, match=r"bad\.yaml.*YAML"):
        load_task_file(p)

    from emotune.eval.icl.classification import prepare

    class NoRetrieval:
        def retrieve(self, *a, **k):
            raise AssertionError("data is checked before retrieval")

    # missing column
    task = load_task_file(write_task(tmp_path, good.replace("label_column: label", "label_column: stars")))
    with pytest.raises(EmotuneError, match=r"bad\.yaml.*column 'stars'.*label_column"):
        prepare(task, NoRetrieval())
    # unknown label
    task = load_task_file(write_task(tmp_path, good))  # templates for labels 0 and 1 only
    rows3 = [{"text": "x", "label": 2}] + ROWS
    data.write_text("".join(json.dumps(r) + "\n" for r in rows3))
    with pytest.raises(EmotuneError, match=r"label 2.*bad\.yaml.*'templates'"):
        prepare(task, NoRetrieval())


def test_bad_data_files_name_file_and_line(tmp_path):
    f = tmp_path / "test.jsonl"
    f.write_text('{"text": "a", "label": 0}\n{"text": broken}\n')
    task = load_task("sst2")
    with pytest.raises(EmotuneError, match=r"test\.jsonl:2"):
        load_split(task, "test", data_dir=tmp_path)
    with pytest.raises(EmotuneError, match=r"no train\.jsonl"):
        load_split(task, "train", data_dir=tmp_path)
    with pytest.raises(EmotuneError, match="cannot parse split"):
        load_split(task, "train[:x]", data_dir=tmp_path)


def test_hub_loading_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    task = task_from_dict({"name": "nope", "kind": "icl", "dataset": {"path": "emotune-test/does-not-exist"},
                           "input_columns": ["text"], "templates": {0: "<X> a", 1: "<X> b"}}, "nope.yaml")
    with pytest.raises(EmotuneError, match=r"nope\.yaml: cannot load dataset 'emotune-test/does-not-exist'"):
        load_split(task, "test")


def icl(templates, **keys):
    cfg = {"name": "t", "kind": "icl", "input_columns": ["text"], "templates": templates, **keys}
    if "column_token_map" in keys and "input_columns" not in keys:
        del cfg["input_columns"]
    return task_from_dict(cfg, "my_task.yaml")


def test_openicl_templates_are_accepted_and_put_the_demos_at_the_ice_token():
    ported = icl({0: "Sentiment.\n</E>Review: </text> good", 1: "Sentiment.\n</E>Review: </text> bad"},
                 column_token_map={"text": "</text>"})
    row = {"text": "fine"}
    assert ported.input_columns == {"text": "</text>"}
    assert ported.fill(0, row) == "Sentiment.\nReview: fine good"  # a demo: the ice token removed
    assert ported.prompt(1, row, "D1\nD2\n") == "Sentiment.\nD1\nD2\nReview: fine bad"
    native = icl({0: "<X> good", 1: "<X> bad"})  # no ice token: the demos go in front
    assert native.prompt(0, {"text": "x"}, "D\n") == "D\nx good"
    markup = icl({0: "<b>Review</b>: <X> good </s>", 1: "<b>Review</b>: <X> bad </s>"})  # not placeholders
    assert markup.fill(0, {"text": "x"}) == "<b>Review</b>: x good </s>"
    other = icl({0: "[ICE]<X> good", 1: "[ICE]<X> bad"}, ice_token="[ICE]")
    assert other.prompt(1, {"text": "x"}, "D\n") == "D\nx bad" and "[ICE]" not in other.fill(0, {"text": "x"})


@pytest.mark.parametrize("templates, keys, match", [
    ({0: "</E><X> good", 1: "<X> bad"}, {}, r"templates\.1' has no ice token '</E>'"),
    ({0: "</E><X> </E>good", 1: "</E><X> bad"}, {}, r"templates\.0' holds the ice token '</E>' 2 times"),
    ({0: "</E>Review: <X> </label>", 1: "</E>Review: <X> bad"}, {}, r"templates\.0': '</label>' is neither"),
    ({0: "</E><X> good", 1: "</E><X> bad"}, {"ice_token": "[ICE]"}, r"'</E>' is neither a placeholder"),
    ({0: "Review: </text> <X> good", 1: "<X> bad"}, {}, r"'</text>' is neither a placeholder"),
    ({0: "<A> <A><B> a", 1: "<A> <A><B> b"}, {"column_token_map": {"a": "<A>", "b": "<A><B>"}}, "overlaps"),
    ({0: "</E> a", 1: "</E> b"}, {"column_token_map": {"text": "</E>"}}, "overlaps the ice token"),
    ({0: "a", 1: "b"}, {"column_token_map": {"text": ""}}, "placeholder of column 'text' is empty"),
    ({0: "<X> a", 1: "<X> b"}, {"ice_token": ""}, "'ice_token' must be a non-empty string"),
    ({0: "<X> a", 1: "<X> b"}, {"column_token_map": {"text": "<X>"}, "input_columns": ["text"]}, "not both"),
])
def test_templates_that_cannot_be_right_are_refused_in_one_line(templates, keys, match):
    with pytest.raises(EmotuneError, match=match) as err:
        icl(templates, **keys)
    assert str(err.value).startswith("my_task.yaml: ") and "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["bad name", "a\nb", "x/y", "..", ".", "", "tâche", "a;rm -rf"])
def test_task_names_must_be_safe_for_directories_and_job_names(tmp_path, name):
    p = write_task(tmp_path, GOOD.replace("name: t", f"name: {json.dumps(name)}"))
    with pytest.raises(EmotuneError, match=r"bad\.yaml: key 'name'") as err:
        load_task_file(p)
    assert "\n" not in str(err.value)


def test_safe_task_names_pass(tmp_path):
    for name in ("ag_news", "generation-ptb", "v1.2", "MMLU_5shot"):
        assert load_task_file(write_task(tmp_path, GOOD.replace("name: t", f"name: {name}"))).name == name


def test_a_template_without_any_placeholder_is_refused():
    with pytest.raises(EmotuneError, match=r"templates\.1' has none of the placeholders <X1>, <X2>"):
        icl({0: "<X1> yes", 1: "It is no."}, column_token_map={"premise": "<X1>", "hypothesis": "<X2>"})
