"""`emotune eval --suite instruct --against ... --judge ...` end to end in-process on tiny models: the shipped
suite on a local slice, against the set's reference, another checkpoint and an outputs file."""

from __future__ import annotations

import json

import pytest
from test_eval_fixtures import one_torch_thread  # noqa: F401  (autouse: one torch thread)
from test_instruct_fixtures import constant_judge, instruct_rows, tuned_model

from emotune.eval.instruct.outputs import read_outputs
from emotune.launch.cli import main as cli_main


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
    other = world / "ckpt" / "against" / "alpaca_eval.outputs.json"
    assert read_outputs(other)[0]["generator"] == str(world / "emo")
    assert result_of(world / "ckpt")["tie"] == 5
    assert run(world, "file", "--against", str(other), "--judge", str(world / "judge"), "--judge-format",
               "pandalm") == 0
    res = result_of(world / "file")  # pandalm's default mode is generate: "AAAA..." is no PandaLM verdict
    assert res["judge"]["format"] == "pandalm" and res["judge"]["mode"] == "generate"
    assert (res["unparsed"], res["n"], res["win_rate"]) == (5, 0, None) and res["b"]["name"] == str(other)
