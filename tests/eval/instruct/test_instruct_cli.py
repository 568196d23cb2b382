"""`emotune eval --suite instruct --against ... --judge ...` end to end in-process on tiny models: the shipped
suite on a local slice, against the set's reference, another checkpoint and an outputs file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from instruct_builders import constant_judge, instruct_rows, outputs_with_marker, tuned_model

from emotune.cli import main as cli_main
from emotune.eval.instruct.outputs import read_outputs, write_outputs


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("instruct-cli")
    _, tok = tuned_model(root / "mle", steps=40, seed=0)
    tuned_model(root / "emo", steps=40, seed=1)
    constant_judge(root / "judge", tok, " A")
    data = root / "data" / "alpaca_eval"
    data.mkdir(parents=True)
    (data / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in instruct_rows(5)))
    return root


def run(world, out, *extra):
    return cli_main(["eval", "--suite", "instruct", "--model", str(world / "mle"), "--out", str(world / out),
                     f"data_dir={world / 'data'}", "max_new_tokens=8", "device=cpu", "progress=false", *extra])


def result_of(out_dir):
    (path,) = out_dir.glob("alpaca_eval.pairwise-*.json")
    return json.loads(path.read_text())


def test_against_reference_prints_the_table(world, capsys):
    assert run(world, "ref", "--against", "reference", "--judge", str(world / "judge"), "--judge-format", "plain") == 0
    out = capsys.readouterr().out
    assert "win" in out and "tie" in out and "lose" in out and "reference" in out
    res = result_of(world / "ref")
    assert (res["win"], res["tie"], res["lose"], res["n"]) == (0, 5, 0, 5)  # always "A": every pair a tie
    assert res["b"]["generator"] == "text_davinci_003" and res["judge"]["mode"] == "likelihood"
    mine = read_outputs(world / "ref" / "alpaca_eval.outputs.json")
    assert len(mine) == 5 and mine[0]["generator"] == str(world / "mle")


def test_against_a_checkpoint_and_an_outputs_file(world):
    assert run(world, "ckpt", "--against", str(world / "emo"), "--judge", str(world / "judge")) == 0
    (other,) = (world / "ckpt" / "against").glob("emo-*/alpaca_eval.outputs.json")
    assert read_outputs(other)[0]["generator"] == str(world / "emo")
    assert result_of(world / "ckpt")["tie"] == 5
    assert run(world, "file", "--against", str(other), "--judge", str(world / "judge"), "--judge-format",
               "pandalm") == 0
    res = result_of(world / "file")  # pandalm's default mode is generate: "AAAA..." is no PandaLM verdict
    assert res["judge"]["format"] == "pandalm" and res["judge"]["mode"] == "generate"
    assert (res["unparsed"], res["n"], res["win_rate"]) == (5, 0, None) and res["b"]["name"] == str(other)


def test_each_opponent_gets_its_own_responses_and_result(world, capsys):
    """A second --against into the same --out judges the second opponent's responses (they were the first's:
    its cached outputs were reused whatever made them), keeps the first result, and reuses only what was made
    by the same weights with the same settings."""
    judge = ["--judge", str(world / "judge")]
    assert run(world, "two", "--against", str(world / "emo"), *judge) == 0
    assert run(world, "two", "--against", str(world / "mle"), *judge) == 0
    results = {r["b"]["name"]: r for r in map(json.loads, map(Path.read_text,
                                                                (world / "two").glob("alpaca_eval.pairwise-*.json")))}
    for name, res in results.items():
        assert res["b"]["generator"] == name, res["b"]  # each judged against its own opponent's responses
    assert set(results) == {str(world / "emo"), str(world / "mle")}  # the first result is still there
    assert results[str(world / "mle")]["n"] == 5
    (emo_out,) = (world / "two" / "against").glob("emo-*/alpaca_eval.outputs.json")
    made = emo_out.stat().st_mtime_ns
    capsys.readouterr()
    assert run(world, "two", "--against", str(world / "emo"), *judge) == 0  # same weights, same settings
    assert "reused" in capsys.readouterr().out and emo_out.stat().st_mtime_ns == made
    summary = json.loads((emo_out.parent / "summary.json").read_text())
    assert summary["tasks"]["alpaca_eval"]["settings"]["resume_key"]["max_new_tokens"] == 8
    assert run(world, "two", "--against", str(world / "emo"), *judge, "max_new_tokens=6", "resume=false") == 0
    assert emo_out.stat().st_mtime_ns != made  # other settings: made again (resume=false)


def test_judge_help_lists_only_the_judges_options(capsys):
    assert cli_main(["judge", "--help"]) == 0
    out = capsys.readouterr().out
    for key in ("encoder", "featurizer", "scoring", "shard", "max_new_tokens", "roundtrip_tokenizer", "resume"):
        assert not re.search(rf"(?<![a-z_]){key}=", out), key  # the evaluator's other options mean nothing here
    for key in ("judge_mode=", "judge_max_new_tokens=", "judge_num_beams=", "judge_repetition_penalty=",
                "bootstrap=", "dtype=", "batch_size="):
        assert key in out


def test_judge_refuses_the_evaluators_other_options(world, capsys, tmp_path):
    other = write_outputs(tmp_path / "o.json", outputs_with_marker(instruct_rows(2), "o", True))
    out = tmp_path / "out"
    assert cli_main(["judge", str(other), str(other), "--judge", str(world / "judge"), "--out", str(out),
                     "encoder=mpnet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key 'encoder'" in err[0] and "judge_num_beams" in err[0]
    assert not out.exists()


def test_stored_opponent_responses_with_other_settings_are_refused_before_any_model_loads(world, capsys):
    judge = ["--judge", str(world / "judge")]
    assert run(world, "keyed", "--against", str(world / "emo"), *judge) == 0
    (outputs,) = (world / "keyed" / "against").glob("emo-*/alpaca_eval.outputs.json")
    (world / "keyed" / "summary.json").unlink()  # so that only the opponent's stored responses can object
    capsys.readouterr()
    assert run(world, "keyed", "--against", str(world / "emo"), *judge, "max_new_tokens=6") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(outputs.parent / "summary.json") in err[0], err
    assert "max_new_tokens=8" in err[0] and "max_new_tokens=6" in err[0]
    assert not (world / "keyed" / "summary.json").exists()  # refused before the evaluated model ran
    (outputs.parent / "summary.json").write_text("{not json")
    assert run(world, "keyed", "--against", str(world / "emo"), *judge) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(outputs.parent / "summary.json") in err[0] and outputs.is_file()
