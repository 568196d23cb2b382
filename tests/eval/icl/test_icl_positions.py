"""ICL prompts longer than the model's positions: OpenICL's rule (emotune.eval.icl.fit), by default at the
model's positions. The exact rule against OpenICL itself is in test_eval_openicl.py."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_eval_fixtures import TEMPLATES, TEST_TEXTS, TRAIN_TEXTS, build_gpt2_tokenizer, one_torch_thread, rows  # noqa: F401

from emotune.eval.icl.classification import build_ice, run_icl_task
from emotune.tasks.files import task_from_dict
from emotune.tasks.shards import merge_shards

ICE_NUM = 8
LONG = " ".join(["the final match in extra time"] * 40)  # too long for the model even without demos


class FixedRetriever:
    def retrieve(self, index_texts, query_texts, k, task="t"):
        return [list(range(k)) for _ in query_texts]

    def settings(self):
        return {"encoder": "fixed"}


def openicl_prompts(task, index_rows, row, tokenizer, limit):
    """OpenICL 0.1.8 PPLInferencer.inference, step 5.1, written out: labels in template order; while the
    label's prompt has more than max_model_token_num tokens, drop the last demo; the shortened list
    carries over to the next label, earlier labels keep their prompt. -> [(prompt, demos), ...]"""
    ice, out = list(range(ICE_NUM)), []
    labels = [r["label"] for r in index_rows]
    for label in task.labels:
        def prompt():
            return task.prompt(label, row, build_ice(task, index_rows, ice, labels))
        while ice and len(tokenizer(prompt())["input_ids"]) > limit:
            ice = ice[:-1]
        out.append((prompt(), len(ice)))
    return out


@pytest.fixture(scope="module")
def short_model(tmp_path_factory):
    """A GPT-2 (learned positions: a token past them has no embedding) whose positions hold the 8-demo
    prompts of some test rows only."""
    from transformers import GPT2Config, GPT2LMHeadModel

    d = tmp_path_factory.mktemp("icl-positions")
    tok = build_gpt2_tokenizer(d / "tok")
    train, test = rows(TRAIN_TEXTS, 4), rows([*TEST_TEXTS, LONG], 4)
    for split, data in (("train", train), ("test", test)):
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    task = task_from_dict({"name": "topics", "kind": "icl", "input_columns": ["text"], "ice_num": ICE_NUM,
                           "templates": TEMPLATES[4], "dataset": {"data_files": {
                               "train": str(d / "train.jsonl"), "test": str(d / "test.jsonl")}}})
    full = [max(len(tok(p)["input_ids"]) for p, _ in openicl_prompts(task, train, r, tok, 10**9)) for r in test]
    limit = sorted(full)[len(full) // 2]
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=limit, n_embd=32, n_layer=2, n_head=4,
                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)).eval()
    return task, tok, model, train, test, limit


def records(out, result):
    return [json.loads(x) for x in (out / result.predictions).read_text().splitlines()]


def test_prompts_past_the_positions_lose_demos_by_default(short_model, tmp_path):
    task, tok, model, train, test, limit = short_model
    result = run_icl_task(task, model, tok, tmp_path, retriever=FixedRetriever(), progress=False, batch_size=3)
    labels = list(TEMPLATES[4])
    dropped = truncated = 0
    for r, row in zip(records(tmp_path, result), test):
        want = openicl_prompts(task, train, row, tok, limit)
        assert [r["prompt_prefix"] + r["prompt_endings"][str(lab)] for lab in labels] == [p for p, _ in want]
        kept = [k for _, k in want]
        assert r["demo_ids"] == list(range(kept[-1])) and r.get("demos_dropped", 0) == ICE_NUM - kept[-1]
        assert r.get("demos_kept_by_label", {str(lab): k for lab, k in zip(labels, kept)}) == \
            {str(lab): k for lab, k in zip(labels, kept)}
        longest = max(len(tok(p)["input_ids"]) for p, _ in want)
        assert r.get("truncated_tokens", 0) == max(longest - limit, 0)  # cut from the left, only without demos
        assert all(math.isfinite(s) for s in r["scores"].values())
        dropped, truncated = dropped + (kept[-1] < ICE_NUM), truncated + (longest > limit)
    assert 0 < dropped < len(test) and truncated == 1  # rows that fit, rows that lose demos, one cut
    assert any("demos_kept_by_label" in r for r in records(tmp_path, result))  # OpenICL's per-label carry-over
    s = result.settings
    assert s["max_seq_len"] == limit == model.config.n_positions and s["max_tokens"] is None
    assert (s["rows_demos_dropped"], s["rows_truncated"]) == (dropped, truncated)

    # max_tokens lowers it (never above the positions); the shards' merge counts the rows over all shards
    low = run_icl_task(task, model, tok, tmp_path / "low", retriever=FixedRetriever(), progress=False,
                       max_tokens=limit - 10)
    assert low.settings["max_seq_len"] == limit - 10 and low.settings["rows_demos_dropped"] >= dropped
    high = run_icl_task(task, model, tok, tmp_path / "high", retriever=FixedRetriever(), progress=False,
                        max_tokens=10 * limit)
    assert high.settings["max_seq_len"] == limit
    shards = []
    for k in (1, 2):
        d = tmp_path / f"shard{k}"
        part = run_icl_task(task, model, tok, d, retriever=FixedRetriever(), progress=False, shard=f"{k}/2")
        summary = {"model": "m", "suite": "s", "emotune_version": "0", "tasks": {task.name: {
            **part.__dict__, "settings": {**part.settings, "resume_key": {"model": "m"}}}}}
        (d / "summary.json").write_text(json.dumps(summary))
        shards.append(d)
    merged = merge_shards(task.name, shards, tmp_path / "merged")
    assert (merged["settings"]["rows_demos_dropped"], merged["settings"]["rows_truncated"]) == (dropped, truncated)


def test_continuation_scoring_gives_every_candidate_the_same_demos(short_model, tmp_path):
    """`continuation` scores what follows the candidates' common prefix: only comparable on one context."""
    task, tok, model, train, test, limit = short_model
    result = run_icl_task(task, model, tok, tmp_path, retriever=FixedRetriever(), progress=False,
                          scoring="continuation")
    labels = [str(lab) for lab in TEMPLATES[4]]
    for r, row in zip(records(tmp_path, result), test):
        assert "demos_kept_by_label" not in r
        kept = openicl_prompts(task, train, row, tok, limit)[-1][1]  # the demos left at the end
        ice = build_ice(task, train, list(range(kept)), [t["label"] for t in train])
        assert [r["prompt_prefix"] + r["prompt_endings"][lab] for lab in labels] == \
            [task.prompt(int(lab), row, ice) for lab in labels]
    assert result.settings["rows_demos_dropped"] > 0


def test_shared_prefix_scoring_stays_within_the_positions():
    """Level 2 batches suffixes of groups with different prefix lengths: a padded slot must not get a
    position past the model's (a long-prefix group next to a long-suffix one)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from emotune.eval.icl.scorer import naive_token_nlls, shared_token_nlls

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=20, n_embd=16, n_layer=1, n_head=2)).eval()
    groups = [[list(range(1, 17)) + [20, 21, 22], list(range(1, 17)) + [23, 24, 25]],  # 19 tokens, 3 after the prefix
              [[1, 2] + list(range(30, 40)), [1, 2] + list(range(40, 50))]]  # 12 tokens, 10 after it
    shared = shared_token_nlls(model, groups, batch_size=2)
    for g, cands in enumerate(groups):
        for j, ref in enumerate(naive_token_nlls(model, cands)):
            assert shared[g][j] == pytest.approx(ref, abs=1e-5)


def test_the_fit_rule_is_in_the_resume_key(short_model):
    """A result made without the rule (scored past the positions) is not reused as this rule's."""
    from emotune.eval.icl.fit import FIT_RULE
    from emotune.eval.options import parse_overrides
    from emotune.eval.resume import result_key
    from emotune.tasks.files import load_task

    opts = parse_overrides([])
    for task in (short_model[0], load_task("mmlu")):
        assert result_key(task, opts, "fp", "float32")["prompt_fit"] == FIT_RULE
    assert "max_tokens" in result_key(short_model[0], opts, "fp", "float32")
