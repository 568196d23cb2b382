"""A judge whose verdicts depend on the pair and on the order (tests/instruct_builders.py RuleJudge: the
response holding a marker word wins, both holding it is a tie, neither is "the first"), under every format and
both modes, with a byte-level BPE and a LLaMA-style sentencepiece tokenizer: win / tie / lose counts, each
order's verdict, and the position swap (a position-bias verdict becomes a tie) are what the rule says.

The sentencepiece case is what scoring verdicts as the prompt's continuation is for: tokenised alone,
PandaLM's "1" is "▁1", a token the judge never writes after "### Evaluation:\\n"."""

from __future__ import annotations

import pytest
from instruct_builders import RuleJudge, rule_outcome, rule_pairs
from train_builders import corpus_lines, make_tokenizer

from emotune.eval.instruct.formats import FORMATS, VERDICTS
from emotune.eval.instruct.judge import verdict_sequences
from emotune.eval.instruct.pairwise import compare


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    from emotune.synthetic.language import train_sentencepiece_tokenizer

    root = tmp_path_factory.mktemp("rule-judge")
    a, b = rule_pairs(4)
    texts = corpus_lines(200) + [FORMATS[f].prompt(x["instruction"], x["output"], y["output"])
                                 for f in FORMATS for x, y in zip(a, b)]
    return {"bpe": make_tokenizer(root / "bpe"),
            "sentencepiece": train_sentencepiece_tokenizer(texts, root / "sp", vocab_size=500)}


def test_sentencepiece_verdicts_are_the_tokens_written_after_the_prompt(tokenizers):
    tok = tokenizers["sentencepiece"]
    fmt = FORMATS["pandalm"]
    prompt = fmt.prompt("Say hi", "hi", "hello")
    seqs, start = verdict_sequences(tok, prompt, fmt)
    assert seqs[0][:start] == tok(prompt)["input_ids"]
    written = {v: s[start:] for v, s in zip(VERDICTS, seqs)}
    assert tok.convert_ids_to_tokens(written["first"]) == ["1"]  # what follows "### Evaluation:\n"
    alone = tok("1", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(alone)[0].startswith("▁")  # the verdict tokenised on its own: not it
    assert written["first"] != alone


@pytest.mark.parametrize("tokenizer", ["bpe", "sentencepiece"])
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("mode", ["likelihood", "generate"])
def test_counts_and_both_orders_follow_the_rule(tokenizers, tokenizer, fmt, mode):
    tok = tokenizers[tokenizer]
    a, b = rule_pairs(4)  # a win, a loss, a real tie and a position-flip tie
    judge = RuleJudge(tok, fmt, critique=mode == "generate")
    opts = {"judge_mode": mode, "judge_max_new_tokens": 80, "bootstrap": 100, "judge_num_beams": 1,
            "judge_repetition_penalty": 1.0}  # the rule judge decodes greedily only (no beam search)
    res = compare(a, b, "A", "B", "rule", fmt, opts, loaded=(judge, tok))
    want = [rule_outcome(x["output"], y["output"]) for x, y in zip(a, b)]
    assert want == [("first", "second", "win"), ("second", "first", "lose"), ("tie", "tie", "tie"),
                    ("first", "first", "tie")]
    assert [(p["verdict_ab"], p["verdict_ba"], p["outcome"]) for p in res["pairs"]] == want
    assert (res["win"], res["tie"], res["lose"], res["unparsed"], res["n"]) == (1, 2, 1, 0, 4)
    assert res["win_rate"] == 50.0 and res["strict_win_rate"] == 25.0
    if mode == "generate":  # the answers were the judge's whole text (Auto-J: the decision after a critique)
        assert all(p["raw_ab"] and p["raw_ba"] for p in res["pairs"])
    back = compare(b, a, "B", "A", "rule", fmt, opts, loaded=(judge, tok))  # the sides swapped
    assert (back["win"], back["tie"], back["lose"]) == (1, 2, 1)
    assert [p["outcome"] for p in back["pairs"]] == ["lose", "win", "tie", "tie"]
