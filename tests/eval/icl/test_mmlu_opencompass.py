"""MMLU where it meets OpenCompass' `mmlu_ppl` edges: prompts longer than the model's positions (its PPL
inferencer's demo-dropping rule, reimplemented here from its loop), OpenCompass' names for the two
accuracies, and a literal `{A}` in a question (OpenCompass' str.replace formatting fills it; ours keeps it)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from eval_builders import build_gpt2_tokenizer, write_jsonl  # noqa: F401

from emotune.eval.icl import mmlu
from emotune.eval.summary import TaskResult
from emotune.tasks.files import load_task

SUBJECT = "world_history"
WORDS = "the treaty of the river valley was signed after a long war between the two old kingdoms".split()


def rows(tag: str, lengths: list[int]) -> list[dict]:
    return [{"subject": SUBJECT, "question": f"{tag}{i} " + " ".join(WORDS[k % len(WORDS)] for k in range(n)),
             "choices": [f"a{i}", f"b{i}", f"c{i}", f"d{i}"], "answer": i % 4} for i, n in enumerate(lengths)]


def opencompass_kept_demos(tokenizer, dev: list[dict], row: dict, max_seq_len: int) -> int:
    """OpenCompass' PPLInferencer.inference, step 5.1: for each label in turn, while the prompt has more
    tokens than max_seq_len (get_token_len: the tokenizer's ids, special tokens included) drop the last
    in-context example; the shortened list carries over to the next label."""
    ice = list(range(len(dev)))
    for label in range(4):
        while ice and len(tokenizer(mmlu.candidates(SUBJECT, [dev[i] for i in ice], row, "r")[label])["input_ids"]) > max_seq_len:
            ice = ice[:-1]
    return len(ice)


@pytest.fixture(scope="module")
def long_prompts(tmp_path_factory):
    """A GPT-2 (learned positions: a token past them has no embedding) with positions for the 5-demo prompt
    of a short question only; medium questions lose demos, one question does not fit even alone."""
    from transformers import GPT2Config, GPT2LMHeadModel

    d = tmp_path_factory.mktemp("mmlu-long")
    tok = build_gpt2_tokenizer(d / "tok")
    dev = rows("d", [12, 14, 10, 16, 12])
    test = rows("t", [2, 3, 25, 40, 60, 4, 400])
    limit = max(len(tok(c)["input_ids"]) for c in mmlu.candidates(SUBJECT, dev, test[1], "r")) + 1
    write_jsonl(d / "data" / "mmlu" / "dev.jsonl", dev)
    write_jsonl(d / "data" / "mmlu" / "test.jsonl", test)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=limit, n_embd=32, n_layer=2, n_head=4,
                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)).eval()
    return d, tok, model, dev, test, limit


def test_long_prompts_drop_demos_from_the_end_as_opencompass(long_prompts, tmp_path):
    d, tok, model, dev, test, limit = long_prompts
    result = mmlu.run_mmlu_task(load_task("mmlu"), model, tok, tmp_path, data_dir=d / "data", progress=False,
                                batch_size=3)
    records = [json.loads(line) for line in (tmp_path / result.predictions).read_text().splitlines()]
    kept = [5 - r.get("demos_dropped", 0) for r in records]
    assert kept == [opencompass_kept_demos(tok, dev, row, limit) for row in test]
    assert kept[:2] == [5, 5] and 0 < min(kept[2:6]) and min(kept[2:6]) < 5 and kept[6] == 0  # all three cases
    for r, row, k in zip(records, test, kept):
        prompts = [r["prompt_prefix"] + r["prompt_endings"][x] for x in "ABCD"]
        assert prompts == mmlu.candidates(SUBJECT, dev[:k], row, "r")  # the first k demos, in order
        longest = max(len(tok(p)["input_ids"]) for p in prompts)
        assert r.get("truncated_tokens", 0) == max(longest - limit, 0)  # cut from the left, only without demos
        assert all(math.isfinite(s) for s in r["scores"].values())
    assert result.settings["max_seq_len"] == limit == model.config.n_positions
    assert result.settings["rows_demos_dropped"] == sum(k < 5 for k in kept) == 4
    assert result.settings["rows_truncated"] == 1

    # max_tokens lowers it further (never above the model's positions)
    low = mmlu.run_mmlu_task(load_task("mmlu"), model, tok, tmp_path / "low", data_dir=d / "data", progress=False,
                             max_tokens=limit - 20)
    assert low.settings["max_seq_len"] == limit - 20 and low.settings["rows_demos_dropped"] >= 4
    high = mmlu.run_mmlu_task(load_task("mmlu"), model, tok, tmp_path / "high", data_dir=d / "data", progress=False,
                              max_tokens=10 * limit)
    assert high.settings["max_seq_len"] == limit


def test_the_two_accuracies_carry_opencompass_names(long_prompts, tmp_path):
    """OpenCompass' headline `mmlu` is the mean over subjects, `mmlu-weighted` the mean over questions."""
    from emotune.eval.harness_schema import to_harness_results

    records = [{"subject": s, "correct": c} for s, c in [("a", True), ("a", True), ("a", False), ("b", False)]]
    from emotune.tasks.metrics import mmlu_metrics

    metrics = mmlu_metrics(records)
    names = mmlu.OPENCOMPASS_NAMES
    assert metrics[names["mmlu"]] == pytest.approx((2 / 3 + 0) / 2) and metrics[names["mmlu-weighted"]] == 0.5
    result = TaskResult("mmlu", "mmlu", metrics, 4, settings={"shots": 5, "opencompass_names": names})
    out = to_harness_results({"model": "m", "tasks": {"mmlu": result.__dict__}})
    oc = out["configs"]["mmlu"]["opencompass_names"]
    assert out["results"]["mmlu"][oc["mmlu"]] == metrics["accuracy_macro"]
    assert out["results"]["mmlu"][oc["mmlu-weighted"]] == metrics["accuracy"]
    # the report: the macro accuracy's label, and the paper table's note on which number its MMLU column is
    from emotune.report.build import MMLU_NOTE
    from emotune.report.data import metric_label

    assert "OpenCompass mmlu" in metric_label("accuracy_macro")
    assert "`mmlu-weighted`" in MMLU_NOTE and "`mmlu`" in MMLU_NOTE and "accuracy_macro" in MMLU_NOTE


def test_a_literal_brace_field_in_a_question_stays_as_written():
    """OpenCompass formats the whole prompt with str.replace('{A}', choice), so a question that contains
    the text `{A}` gets a choice in its place; ours formats the template, the row's text is kept."""
    row = {"subject": SUBJECT, "question": "In set notation, is {A} a subset of {B} when A = {1}?",
           "choices": ["yes", "no", "only if {B} is empty", "{D}"], "answer": 0}
    cands = mmlu.candidates(SUBJECT, [], row, "r")
    assert cands[0].endswith("In set notation, is {A} a subset of {B} when A = {1}?\nA. yes\nB. no\n"
                             "C. only if {B} is empty\nD. {D}\nAnswer: A")
    template = "{question}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\nAnswer: "
    opencompass = template.replace("{question}", row["question"])
    for key, choice in zip("ABCD", row["choices"]):
        opencompass = opencompass.replace("{" + key + "}", choice)
    assert "is yes a subset of no" in opencompass and "is yes a subset of no" not in cands[0]  # the difference kept
