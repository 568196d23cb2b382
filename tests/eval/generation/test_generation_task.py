"""Generation tasks: task files, prefix selection, run_generation_task end to end on tiny local models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_generation_fixtures import (
    MARKETS,
    SPORTS,
    build_gpt2,
    build_llama,
    build_tokenizer,
    one_thread,  # noqa: F401 (autouse: one torch thread)
    sentences,
    write_jsonl,
)

from emotune.errors import EmotuneError
from emotune.eval.generation.task import SUITE, GenerationSpec, run_generation_task, select_prefixes, spec_from_task
from emotune.eval.summary import read_summary, write_summary
from emotune.tasks.files import CONFIG_DIR, load_task

# docs/generation-eval.md, *Task files*: dataset -> (text column, prefix words, generation length)
PAPER = {"generation-wikitext2": ("text", 20, 80), "generation-wikitext103": ("text", 20, 80),
         "generation-webtext": ("text", 20, 80), "generation-ptb": ("sentence", 5, 25),
         "generation-writingprompts": ("text", 35, 80), "generation-agnews": ("text", 10, 30)}


@pytest.mark.parametrize("name", SUITE)
def test_task_files_follow_the_paper(name):
    task = load_task(name)
    spec = spec_from_task(task)
    column, k, m = PAPER[name]
    assert task.kind == "generation" and spec.name == name
    assert (spec.text_column, spec.prefix_words, spec.continuation_words, spec.new_tokens) == (column, k, m, m)
    assert (spec.max_rows, spec.min_chars, spec.extra_words, spec.exclude) == (4000, 100, 10, ["=="])
    assert spec.test_split == "test"


def test_suite_lists_every_generation_task_file():
    files = sorted(p.stem for p in (CONFIG_DIR / "tasks").glob("generation-*.yaml"))
    assert sorted(SUITE) == files


def test_prefix_selection_rules():
    spec = GenerationSpec(name="t", source="t.yaml", text_column="text", prefix_words=3, continuation_words=4,
                          new_tokens=4, max_rows=6, min_chars=30, extra_words=2)
    long = "w1 w2 w3 w4 w5 w6 w7 w8 w9 and more"  # 11 words, 35 characters: kept
    rows = [{"text": long},
            {"text": "short but many words a b c d e f"},  # 32 characters, 10 >= 3 + 4 + 2 words: kept
            {"text": " = = Gameplay == heading with plenty of words to pass the other rules"},  # '==': dropped
            {"text": "one two three four five six seven eight nine"},  # 44 characters but 9 words: kept
            {"text": "a b c d e f g h"},  # 8 words < 9 and 15 characters < 30: dropped
            {"text": None},
            {"text": "  leading   spaces   count   as  one x1 x2 x3 x4 x5 x6 "},
            {"text": long}]  # beyond max_rows = 6
    out = select_prefixes(rows, spec)
    assert [e.index for e in out] == [0, 1, 3]
    assert (out[0].prefix, out[0].continuation) == ("w1 w2 w3", "w4 w5 w6 w7")
    assert out[0].human_text == "w1 w2 w3 w4 w5 w6 w7"
    assert (out[2].prefix, out[2].continuation) == ("one two three", "four five six seven")
    spec.max_rows = 7
    out = select_prefixes(rows, spec)
    assert [e.index for e in out] == [0, 1, 3, 6]  # whitespace runs count as one separator
    assert (out[3].prefix, out[3].continuation) == ("leading spaces count", "as one x1 x2")
    spec.extra_words = 3  # 9 words < 3 + 4 + 3
    assert [e.index for e in select_prefixes(rows, spec)] == [0, 1, 6]


def test_task_file_errors_name_the_key(tmp_path):
    base = {"name": "g", "kind": "generation", "text_column": "text", "prefix_words": 2, "continuation_words": 3,
            "new_tokens": 3}
    for broken, key in [({"text_column": None}, "text_column"), ({"prefix_words": 0}, "prefix_words"),
                        ({"new_tokens": "80"}, "new_tokens"), ({"prefix_filter": {"min_char": 3}}, "min_char"),
                        ({"prefix_filter": {"exclude": [""]}}, "exclude")]:
        with pytest.raises(EmotuneError, match=key):
            spec_from_task({**base, **broken})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    tok = build_tokenizer(root / "tok")
    model = build_llama(None, len(tok), seed=0)
    build_llama(root / "oracle", len(tok), seed=1)
    tok.save_pretrained(str(root / "oracle"))
    reference = build_llama(None, len(tok), seed=2)
    build_tokenizer(root / "tiny-gpt2")
    build_gpt2(root / "tiny-gpt2", len(tok), seed=3)
    data = root / "data" / "generation-toy"
    rows = [{"text": t} for t in sentences(SPORTS, 14, 30, 1)]
    rows.insert(3, {"text": " = = Gameplay = = "})
    rows.insert(5, {"text": "too short"})
    write_jsonl(data / "test.jsonl", rows)
    write_jsonl(data / "validation.jsonl", [{"text": t} for t in sentences(MARKETS, 4, 25, 2)])
    task = {"name": "generation-toy", "kind": "generation", "dataset": {"path": "toy/none"}, "text_column": "text",
            "prefix_words": 4, "continuation_words": 12, "new_tokens": 8, "ce_split": "validation",
            "prefix_filter": {"max_rows": 4000, "min_chars": 50, "extra_words": 2}}
    opts = {"data_dir": str(root / "data"), "runs": 2, "featurizer": str(root / "tiny-gpt2"), "max_text_length": 64,
            "feature_cache_dir": str(root / "cache"), "oracle": str(root / "oracle"), "reference": reference,
            "gen_batch_size": 8}
    return root, model, tok, task, opts


def test_run_generation_task_end_to_end(setup):
    root, model, tok, task, opts = setup
    out = root / "out"
    # what `emotune eval` passes along for every kind must be accepted
    cli_extra = {"encoder": "default", "scoring": None, "shared_prefix": True, "batch_size": 8, "limit": None,
                 "progress": False, "dtype": "auto", "device": None, "cache_dir": None, "resume": True,
                 "max_tokens": None, "retriever_batch_size": 64, "roundtrip_tokenizer": None,
                 "trust_remote_code": False}
    res = run_generation_task(task, model, tok, out, **{**cli_extra, **opts})
    assert res.kind == "generation" and res.task == "generation-toy" and res.n_examples == 14
    lines = [json.loads(x) for x in (out / res.predictions).read_text().splitlines()]
    assert len(lines) == 2 * 14 and {r["run"] for r in lines} == {0, 1}
    assert all(r["n_new_tokens"] in (8, 9) for r in lines)
    m = res.metrics
    for key in ("mauve", "mauve_std", "rouge1", "rouge2", "rougeL", "rouge1_continuation", "ppl_test",
                "ppl_test_token", "ppl_oracle", "forward_ce", "reverse_ce", "mean_new_tokens"):
        assert key in m and np.isfinite(m[key]), key
    assert 0 < m["mauve"] <= 1 and m["mauve"] == pytest.approx((m["mauve/run0"] + m["mauve/run1"]) / 2)
    assert 0 < m["rouge1"] <= 1 and m["rouge1"] > m["rouge1_continuation"]  # the shared prefix counts
    assert m["ppl_test_texts"] == 14 and m["ce_texts"] == 4
    assert m["ppl_oracle"] > 1 and m["forward_ce"] > 0 and m["reverse_ce"] > 0
    assert res.settings["min_new_tokens"] == 8 and res.settings["max_new_tokens"] == 9
    assert res.settings["human_features_cached"] is False
    path = write_summary(out, "tiny", "generation", [res])
    assert read_summary(path)["tasks"]["generation-toy"]["metrics"]["mauve"] == m["mauve"]

    # same seed: the same samples; the human features now come from the cache
    again = run_generation_task(task, model, tok, root / "out2", **{**opts, "metrics": "mauve"})
    assert again.settings["human_features_cached"] is True
    assert again.metrics["mauve"] == pytest.approx(m["mauve"])
    assert set(again.metrics) == {"mauve", "mauve_std", "mauve_runs", "mauve_prefixes", "mauve_ceiling",
                                  "mauve_ceiling_std", "mauve/run0", "mauve/run1", "mean_new_tokens", "samples_ended"}
    assert again.metrics["mauve_runs"] == 2 and again.metrics["mauve_prefixes"] == 14
    assert 0 < again.metrics["mauve_ceiling"] <= 1  # human vs human, two random halves per run
    assert again.settings["eos"] == "min_new_tokens" and again.settings["truncated_texts"] >= 0
    assert (root / "out2" / again.predictions).read_text() == (out / res.predictions).read_text()


def test_run_generation_task_input_errors(setup, tmp_path):
    root, model, tok, task, opts = setup
    light = {**opts, "metrics": ["rouge"], "runs": 1}
    with pytest.raises(EmotuneError, match="unknown generation option 'run'"):
        run_generation_task(task, model, tok, tmp_path, run=3)
    with pytest.raises(EmotuneError, match="no column 'story'"):
        run_generation_task({**task, "text_column": "story"}, model, tok, tmp_path, **light)
    with pytest.raises(EmotuneError, match="prefix filter"):
        run_generation_task({**task, "prefix_words": 40}, model, tok, tmp_path, **light)
    with pytest.raises(EmotuneError, match="metric 'bleu'"):
        run_generation_task(task, model, tok, tmp_path, **{**light, "metrics": "rouge,bleu"})
    with pytest.raises(EmotuneError, match="runs"):
        run_generation_task(task, model, tok, tmp_path, **{**light, "runs": 0})
    # a local-file task whose file is missing says which key to fix
    webtext = load_task("generation-webtext")
    with pytest.raises(EmotuneError, match="data_files"):
        run_generation_task(webtext, model, tok, tmp_path, metrics=["rouge"], runs=1)
    assert not any(Path(tmp_path).iterdir())  # nothing written on bad input
