"""Responses and the pairwise judge on tiny models trained or built on the spot (tests/test_instruct_fixtures.py):
greedy decoding matches HF generate and does not depend on the batch; a judge that always names the first
response gives only ties once the orders are swapped; a judge that prefers one side gives that side every win."""

from __future__ import annotations

import json

import pytest
import torch
from test_eval_fixtures import one_torch_thread  # noqa: F401  (autouse: one torch thread)
from test_instruct_fixtures import constant_judge, instruct_rows, outputs_with_marker, trained_judge, tuned_model

from emotune.eval.instruct.formats import FIRST, FORMATS
from emotune.eval.instruct.outputs import read_outputs
from emotune.eval.instruct.pairwise import compare
from emotune.eval.instruct.task import decode_responses, render_prompt, run_instruct_task
from emotune.tasks.files import task_from_dict


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("instruct")
    model, tok = tuned_model(root / "model")
    rows = instruct_rows(6)
    (root / "data").mkdir()
    (root / "data" / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = task_from_dict({"name": "alpaca_eval", "kind": "instruct", "test_split": "eval",
                           "dataset": {"data_files": {"eval": str(root / "data" / "eval.jsonl")}}})
    return {"root": root, "model": model, "tok": tok, "rows": rows, "task": task}


def test_greedy_responses_match_hf_generate_and_any_batch(world):
    model, tok = world["model"], world["tok"]
    prompts = [render_prompt(tok, r["instruction"], None, "alpaca") for r in world["rows"]]
    opts = {"decoding": "greedy", "temperature": 1.0, "max_new_tokens": 12, "seed": 0, "progress": False}
    batched = decode_responses(model, tok, prompts, dict(opts, gen_batch_size=4))
    single = decode_responses(model, tok, prompts, dict(opts, gen_batch_size=1))
    assert batched == single
    for p, got in zip(prompts, single):  # HF's own greedy search, one prompt at a time
        ref = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                             do_sample=False, max_new_tokens=12, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)[0, len(p):].tolist()
        if tok.eos_token_id in ref:
            ref = ref[: ref.index(tok.eos_token_id) + 1]
        assert got == ref


def test_sampled_responses_are_seeded_per_instruction(world):
    model, tok = world["model"], world["tok"]
    prompts = [render_prompt(tok, r["instruction"], None, "alpaca") for r in world["rows"]]
    opts = {"decoding": "sample", "temperature": 0.9, "max_new_tokens": 10, "seed": 5, "progress": False}
    a = decode_responses(model, tok, prompts, dict(opts, gen_batch_size=3))
    assert a == decode_responses(model, tok, prompts, dict(opts, gen_batch_size=1))
    assert a != decode_responses(model, tok, prompts, dict(opts, seed=6, gen_batch_size=3))


def test_the_task_writes_every_instruction_in_alpaca_eval_format(world, tmp_path):
    res = run_instruct_task(world["task"], world["model"], world["tok"], tmp_path, max_new_tokens=8)
    recs = read_outputs(tmp_path / res.predictions)  # the strict reader checks every record
    assert [r["instruction"] for r in recs] == [r["instruction"] for r in world["rows"]]
    assert [r["dataset"] for r in recs] == [r["dataset"] for r in world["rows"]]
    assert res.kind == "instruct" and res.n_examples == 6 and 0 < res.metrics["mean_new_tokens"] <= 8
    assert res.settings["prompt"] == "alpaca" and res.settings["decoding"] == "greedy"


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_a_judge_that_always_names_the_first_gives_only_ties(world, tmp_path, fmt):
    tok = world["tok"]
    judge = tmp_path / "judge"
    constant_judge(judge, tok, FORMATS[fmt].continuations[FIRST])
    mine = outputs_with_marker(world["rows"], "m", True)
    other = outputs_with_marker(world["rows"], "o", False, seed=1)
    res = compare(mine, other, "m", "o", str(judge), fmt, {"judge_mode": "likelihood", "bootstrap": 100})
    assert all(p["verdict_ab"] == FIRST and p["verdict_ba"] == FIRST for p in res["pairs"])
    assert (res["win"], res["tie"], res["lose"], res["unparsed"]) == (0, 6, 0, 0) and res["win_rate"] == 50.0


def test_unparseable_generated_verdicts_are_counted_not_guessed(world, tmp_path):
    judge = tmp_path / "judge"
    constant_judge(judge, world["tok"], " A")  # generates "AAAA...": no verdict of the plain format
    mine = outputs_with_marker(world["rows"], "m", True)
    res = compare(mine, mine, "m", "m2", str(judge), "plain", {"judge_mode": "generate", "judge_max_new_tokens": 4})
    assert (res["win"], res["tie"], res["lose"], res["unparsed"], res["n"]) == (0, 0, 0, 6, 0)
    assert all(p["outcome"] is None and p["raw_ab"] for p in res["pairs"])


@pytest.fixture(scope="module")
def preferring_judge(world):
    path = world["root"] / "trained-judge"
    trained_judge(path, world["tok"])
    return str(path)


@pytest.mark.parametrize("mode", ["likelihood", "generate"])
def test_a_judge_that_prefers_one_side_gives_it_every_win(world, preferring_judge, mode):
    marked = outputs_with_marker(world["rows"], "marked", True)
    plain = outputs_with_marker(world["rows"], "plain", False, seed=2)
    opts = {"judge_mode": mode, "judge_max_new_tokens": 4, "bootstrap": 200}
    res = compare(marked, plain, "marked", "plain", preferring_judge, "plain", opts)
    assert (res["win"], res["tie"], res["lose"], res["unparsed"]) == (6, 0, 0, 0), res["pairs"]
    back = compare(plain, marked, "plain", "marked", preferring_judge, "plain", opts)
    assert (back["win"], back["tie"], back["lose"]) == (0, 0, 6) and back["win_rate"] == 0.0
    assert res["a"]["mean_length"] > 0 and res["b"]["mean_length"] > 0


def test_chat_prompt_uses_the_tokenizers_template_and_refuses_none(world):
    from emotune.errors import EmotuneError

    tok = world["tok"]
    with pytest.raises(EmotuneError, match="no chat template"):
        render_prompt(tok, "Say hi", None, "chat")
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|> {% endif %}")
    try:
        ids = render_prompt(tok, "Say hi", "to the river", "chat")
        assert tok.decode(ids) == "<|user|> Say hi\n\nto the river\n<|assistant|> "
    finally:
        tok.chat_template = None
