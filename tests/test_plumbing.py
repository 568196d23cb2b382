"""What every command reads alike (emotune.plumbing) and the one local record reader (emotune.local_records):
the exact lines their callers printed before they shared them."""

from __future__ import annotations

import json
import os

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from emotune.errors import EmotuneError
from emotune.local_records import MISSING, Wording, field_of, read_local_records
from emotune.plumbing import (
    apply_overrides,
    argument_line,
    config_line,
    key_values,
    parse_override,
    split_local_rank,
    take_local_rank,
    task_file_line,
)


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = Field(1, ge=1)


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    inner: Inner = Inner()
    items: list[Inner] = []
    flag: bool = False


def error_of(data: dict) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        Outer.model_validate(data)
    return info.value


# ---------------------------------------------------------------- key=value

def test_overrides_and_settings_read_values_as_yaml_scalars():
    assert parse_override("data.block_size=128") == (["data", "block_size"], 128)
    assert parse_override(" lr =1e-5") == (["lr"], "1e-5")  # YAML 1.1 reads 1e-5 as a string (pydantic casts it)
    assert parse_override("a={b: [1, 2]}") == (["a"], {"b": [1, 2]})
    assert parse_override("a=") == (["a"], None) and parse_override("a=: x") == (["a"], ": x")  # not YAML: the text
    for bad in ("novalue", "=1"):
        with pytest.raises(EmotuneError, match=r"command-line override .* is not key=value"):
            parse_override(bad)
    assert key_values(["x=[1, 2]", "y=", "z=true"], ("x", "y", "z")) == {"x": [1, 2], "y": None, "z": True}
    with pytest.raises(EmotuneError, match=r"^argument 'x': expected key=value \(keys: x, y\)$"):
        key_values(["x"], ("x", "y"))
    with pytest.raises(EmotuneError, match=r"^argument 'w=1': unknown key 'w' of emotune judge \(keys: x\)$"):
        key_values(["w=1"], ("x",), " of emotune judge")


def test_overrides_set_dotted_keys_and_list_items_without_touching_the_input():
    data = {"a": {"b": 1}, "runs": [{"seed": 0}, {"seed": 1}]}
    out = apply_overrides(data, ["a.c=2", "runs.1.seed=7", "new.key=x"])
    assert out == {"a": {"b": 1, "c": 2}, "runs": [{"seed": 0}, {"seed": 7}], "new": {"key": "x"}}
    assert data == {"a": {"b": 1}, "runs": [{"seed": 0}, {"seed": 1}]}
    with pytest.raises(EmotuneError, match=r"override 'a.b.c=1': 'b' is not a section"):
        apply_overrides(data, ["a.b.c=1"])
    with pytest.raises(EmotuneError, match=r"override 'runs.5.seed=1': '5' is not an index of a list of 2"):
        apply_overrides(data, ["runs.5.seed=1"])


# ---------------------------------------------------------------- --local_rank

@pytest.mark.parametrize("argv", [["--local_rank=3", "train", "c.yaml"], ["--local_rank", "3", "train", "c.yaml"],
                                  ["train", "c.yaml", "--local-rank=3"], ["train", "--local_rank=3", "c.yaml", "--local_rank=5"]])
def test_the_launchers_local_rank_is_taken_wherever_it_lands(argv, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert split_local_rank(argv) == (["train", "c.yaml"], "3")  # the first one given
    assert take_local_rank(argv) == ["train", "c.yaml"] and os.environ["LOCAL_RANK"] == "3"
    monkeypatch.setenv("LOCAL_RANK", "1")  # torchrun's wins
    assert take_local_rank(argv) == ["train", "c.yaml"] and os.environ["LOCAL_RANK"] == "1"
    assert split_local_rank(["train", "c.yaml"]) == (["train", "c.yaml"], None)


def test_a_bad_local_rank_is_one_line():
    with pytest.raises(EmotuneError, match=r"^--local_rank needs a value$"):
        split_local_rank(["train", "--local_rank"])
    with pytest.raises(EmotuneError, match=r"^--local-rank: expected a rank number, got 'x'$"):
        split_local_rank(["--local-rank=x", "train"])


# ---------------------------------------------------------------- a ValidationError as one line

def test_a_config_error_names_the_dotted_key():
    # the pipeline's wording (pydantic's own for a missing key)
    assert config_line(error_of({"name": "n", "inner": {"size": 0}}), "p.yaml") == \
        "p.yaml: inner.size: Input should be greater than or equal to 1 (got 0)"
    assert config_line(error_of({"name": "n", "items": [{}, {"sise": 2}]}), "p.yaml") == "p.yaml: items.1.sise: unknown key"
    assert config_line(error_of({}), "p.yaml") == "p.yaml: name: Field required"
    # the training config's wording
    words = dict(unknown="unknown key (check its spelling and section)", missing="required key is missing", more=True)
    assert config_line(error_of({"inner": {"x": 1}}), "c.yaml", **words) == \
        "c.yaml: name: required key is missing (and 1 more problem(s))"
    assert config_line(error_of({"name": "n", "extra": 1}), "c.yaml", **words) == \
        "c.yaml: extra: unknown key (check its spelling and section)"


def test_a_task_file_error_names_the_key_without_list_positions():
    assert task_file_line(error_of({"name": "n", "items": [{"size": 0}]}), "t.yaml") == \
        "t.yaml: key 'items.size': Input should be greater than or equal to 1 (got 0)"
    assert task_file_line(error_of({"name": "n", "oops": 1}), "t.yaml") == "t.yaml: unknown key 'oops'"
    assert task_file_line(error_of({}), "t.yaml") == "t.yaml: missing key 'name'"


def test_a_settings_error_names_the_argument_as_given():
    values = {"name": "n", "flag": "maybe"}
    assert argument_line(error_of(values), values) == "argument flag='maybe': must be true or false"
    values = {"name": "n", "nope": 1}
    assert argument_line(error_of(values), values, prefix="option", unknown=" (known: name)") == \
        "option 'nope': unknown key (known: name)"
    values = {"name": 3}
    assert argument_line(error_of(values), values) == "argument name=3: Input should be a valid string"


# ---------------------------------------------------------------- local records

TRAIN = Wording(line="{path}: line {n}", record="{path}: record {n}", row="{path}: row {n}",
                bad_json="{at}: invalid JSON: {msg}", not_object="{at}: not a JSON object",
                not_object_line="{at}: not a JSON object", bad_parquet="{path}: not a readable parquet file: {problem}")


def test_records_come_with_where_they_stand(tmp_path):
    lines = tmp_path / "a.jsonl"
    lines.write_text('{"text": "one"}\n\n{"text": "two"}\n')
    assert read_local_records(lines, TRAIN) == [(f"{lines}: line 1", {"text": "one"}), (f"{lines}: line 3", {"text": "two"})]
    listed = tmp_path / "b.json"
    listed.write_text(json.dumps([{"text": "x"}, {"text": "y"}]))
    assert read_local_records(str(listed), TRAIN) == [(f"{listed}: record 1", {"text": "x"}), (f"{listed}: record 2", {"text": "y"})]
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    table = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["p1", "p2"]}), table)
    assert read_local_records(table, TRAIN) == [(f"{table}: row 1", {"text": "p1"}), (f"{table}: row 2", {"text": "p2"})]


def test_bad_records_are_one_line_in_the_callers_words(tmp_path):
    from emotune.eval.task_data import WORDING as EVAL
    from emotune.train.records import WORDING as TRAIN_DATA

    assert TRAIN_DATA == TRAIN
    cases = [("a.jsonl", '{"t": 1}\n{"t": \n', "{p}: line 2: invalid JSON: Expecting value", "{p}:2: not valid JSON (Expecting value)"),
             ("b.jsonl", '{"t": 1}\n[1]\n', "{p}: line 2: not a JSON object", "{p}:2: each line must be a JSON object"),
             ("c.json", '[{"t": 1},\n 2]', "{p}: record 2: not a JSON object", "{p}: record 2 is not a JSON object"),
             ("d.json", '[{"t": 1},\n oops]', "{p}: line 2: invalid JSON: Expecting value", "{p}:2: not valid JSON (Expecting value)"),
             ("e.parquet", "not parquet", "{p}: not a readable parquet file: ", "{p}: cannot read parquet (")]
    for name, text, train_says, eval_says in cases:
        path = tmp_path / name
        path.write_text(text)
        for wording, said in ((TRAIN, train_says), (EVAL, eval_says)):
            with pytest.raises(EmotuneError) as info:
                read_local_records(path, wording)
            assert str(info.value).startswith(said.format(p=path)), (str(info.value), said)


def test_a_dotted_field_reaches_into_nested_records():
    row = {"data": {"instruction": "i"}, "a.b": 1}
    assert field_of(row, "data.instruction") == "i" and field_of(row, "a.b") == 1
    assert field_of(row, "data.output") is MISSING and field_of(row, "text") is MISSING
