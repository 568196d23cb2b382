"""AlpacaEval's outputs format: every record written is checked, bad files are named by record and key,
two sides with different instruction sets are refused; win-rate statistics against independent sums."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as scipy_stats

from emotune.errors import EmotuneError
from emotune.eval.instruct.formats import FIRST, FORMATS, SECOND, TIE
from emotune.eval.instruct.judge import LOSE, WIN, combine
from emotune.eval.instruct.outputs import FIELDS, align, read_outputs, write_outputs
from emotune.eval.instruct.stats import bootstrap_ci, summarize


def rec(i: int, out: str = "x") -> dict:
    return {"instruction": f"do {i}", "output": out, "generator": "g", "dataset": "d"}


def test_written_file_is_alpaca_eval_format(tmp_path):
    path = write_outputs(tmp_path / "o.json", [rec(i, f"answer {i}") for i in range(3)])
    data = json.loads(path.read_text())
    assert isinstance(data, list) and len(data) == 3
    for r in data:  # exactly the four string fields alpaca_eval reads
        assert set(r) == set(FIELDS) and all(isinstance(r[k], str) for k in FIELDS)
    assert read_outputs(path) == data


@pytest.mark.parametrize("records,words", [
    ({"instruction": "a"}, ["not a JSON list"]),
    ([], ["no records"]),
    ([rec(0), "text"], ["record 2", "str"]),
    ([rec(0), {k: v for k, v in rec(1).items() if k != "output"}], ["record 2", "'output'"]),
    ([rec(0), dict(rec(1), generator=3)], ["record 2", "'generator'", "int"]),
    ([rec(0), dict(rec(1), instruction=" ")], ["record 2", "empty"]),
    ([rec(0), rec(0)], ["record 2", "record 1"]),
])
def test_bad_outputs_files_name_the_record(tmp_path, records, words):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(records))
    with pytest.raises(EmotuneError) as err:
        read_outputs(path)
    for w in [str(path), *words]:
        assert w in str(err.value)
    with pytest.raises(EmotuneError):  # and nothing bad is ever written
        write_outputs(tmp_path / "w.json", records if isinstance(records, list) else [records])
    assert not (tmp_path / "w.json").exists()


def test_align_pairs_by_instruction_and_refuses_different_sets():
    a = [rec(0, "a0"), rec(1, "a1")]
    b = [rec(1, "b1"), rec(0, "b0")]
    assert [(x["output"], y["output"]) for x, y in align(a, b, "A", "B")] == [("a0", "b0"), ("a1", "b1")]
    with pytest.raises(EmotuneError, match="different instruction sets: A .* vs B .*only A has 'do 1'"):
        align(a, [rec(0), rec(2)], "A", "B")


def test_position_swap_truth_table():
    # A first gives ab, B first gives ba; A wins only if both orders agree on it
    assert combine(FIRST, SECOND) == WIN and combine(SECOND, FIRST) == LOSE
    assert combine(FIRST, FIRST) == TIE and combine(SECOND, SECOND) == TIE  # flips with the order: a tie
    assert combine(TIE, TIE) == TIE and combine(FIRST, TIE) == TIE and combine(TIE, FIRST) == TIE
    assert combine(None, FIRST) is None and combine(SECOND, None) is None


def test_summary_counts_and_win_rate():
    outcomes = [WIN] * 5 + [TIE] * 2 + [LOSE] * 3 + [None]
    s = summarize(outcomes, 200, 0)
    assert (s["win"], s["tie"], s["lose"], s["unparsed"], s["n"]) == (5, 2, 3, 1, 10)
    assert s["win_rate"] == pytest.approx(100 * (5 + 0.5 * 2) / 10) and s["strict_win_rate"] == pytest.approx(50.0)
    assert summarize([WIN] * 4, 100, 0)["win_rate_ci"] == [100.0, 100.0]


def test_bootstrap_interval_against_scipy():
    rng = np.random.default_rng(3)
    scores = rng.choice([0.0, 0.5, 1.0], size=120, p=[0.3, 0.2, 0.5])
    lo, hi = bootstrap_ci(scores, n_boot=20000, seed=1)
    ref = scipy_stats.bootstrap((scores,), np.mean, n_resamples=20000, method="percentile", confidence_level=0.95,
                                random_state=np.random.default_rng(2)).confidence_interval
    assert lo == pytest.approx(ref.low, abs=0.01) and hi == pytest.approx(ref.high, abs=0.01)
    assert bootstrap_ci(scores, 500, seed=4) == bootstrap_ci(scores, 500, seed=4)  # seeded


@pytest.mark.parametrize("name", list(FORMATS))
def test_formats_parse_their_own_verdicts_and_nothing_else(name):
    fmt = FORMATS[name]
    answers = {"autoj": {FIRST: "R1 is clear. So, the final decision is Response 1.", SECOND:
                         "So, the final decision is Response 2", TIE: "... final decision is Tie"},
               "pandalm": {FIRST: "1\n\n### Reason: x", SECOND: "2\n", TIE: "Tie\n### Reason"},
               "plain": {FIRST: " A", SECOND: "B.", TIE: " tie"}}[name]
    for verdict, text in answers.items():
        assert fmt.parse(text) == verdict
        assert fmt.parse(fmt.continuations[verdict]) == verdict  # likelihood strings read as their verdict
    for junk in ("", "AAAA", "I cannot decide", "111"):
        assert fmt.parse(junk) is None
    p = fmt.prompt("Say hi", "first answer", "second answer")
    assert "Say hi" in p and p.index("first answer") < p.index("second answer")
