"""`emotune eval ... shard=K/N`: the shards' records, merged, are the unsharded run's byte for byte.

A shard plans the whole task (demos for every row, every prompt tokenised) and runs only the model calls
that involve its rows, so its scores are the very floats of the unsharded run; the boundaries below fall
inside the scorer's batches on purpose (a batch shared by two shards runs in both).
"""

from __future__ import annotations

import json

import pytest
from eval_builders import TEST_TEXTS, TRAIN_TEXTS, build_llama, build_tokenizer, rows, write_jsonl  # noqa: F401

from emotune.cli import main as emotune
from emotune.eval.summary import read_summary
from emotune.tasks.shards import merge_shards, shard_dir, shard_range

TEST = [f"{t} {w}" for w in ("today", "again", "now") for t in TEST_TEXTS] + ["who won the match ?"]  # 19 rows


def mmlu_rows(subject, tag, n):
    return [{"subject": subject, "question": f"Q{tag}{i} {subject}", "choices": [f"a{i}", f"b{i}", f"c{i}", f"d{i}"],
             "answer": (i * 3) % 4} for i in range(n)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    tok = build_tokenizer(d / "model")
    build_llama(d / "model", len(tok), seed=3)
    data = d / "data"
    write_jsonl(data / "trec" / "train.jsonl", rows(TRAIN_TEXTS, 6, "coarse_label"))
    write_jsonl(data / "trec" / "test.jsonl", rows(TEST, 6, "coarse_label"))
    subjects = [("anatomy", 4), ("abstract_algebra", 6), ("virology", 3)]
    write_jsonl(data / "mmlu" / "test.jsonl", [r for s, n in subjects for r in mmlu_rows(s, "t", n)])
    write_jsonl(data / "mmlu" / "dev.jsonl", [r for s, _ in subjects for r in mmlu_rows(s, "d", 5)])
    return d


def run(setup, out, *extra, task="trec"):
    return emotune(["eval", "--model", str(setup / "model"), "--tasks", task, "--out", str(out),
                    f"data_dir={setup / 'data'}", f"cache_dir={setup / 'cache'}", "progress=false", "batch_size=4",
                    *extra])


def test_shard_ranges_tile_the_rows():
    for n_rows in (1, 7, 19, 100):
        for n in range(1, min(n_rows, 9) + 1):
            parts = [shard_range(n_rows, k, n) for k in range(1, n + 1)]
            assert [i for p in parts for i in p] == list(range(n_rows))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize("task,extra", [("trec", ()), ("trec", ("shared_prefix=false",)), ("mmlu", ("limit=5",)),
                                        ("mmlu", ("shared_prefix=false",)), ("mmlu", ("max_tokens=70",))])
def test_merged_shards_equal_the_unsharded_run(setup, tmp_path, task, extra):
    whole = tmp_path / "whole"
    assert run(setup, whole, *extra, task=task) == 0
    dirs = [shard_dir(tmp_path / "task", k, 3) for k in (1, 2, 3)]
    for k, d in enumerate(dirs, 1):
        assert run(setup, d, *extra, f"shard={k}/3", task=task) == 0
    counts = [read_summary(d / "summary.json")["tasks"][task]["n_examples"] for d in dirs]
    merged = merge_shards(task, dirs, tmp_path / "task")
    expected = read_summary(whole / "summary.json")["tasks"][task]
    assert sum(counts) == expected["n_examples"] and min(counts) >= 3  # every shard did part of the rows
    assert (tmp_path / "task" / f"{task}.predictions.jsonl").read_bytes() == \
        (whole / f"{task}.predictions.jsonl").read_bytes()
    assert merged["metrics"] == expected["metrics"] and merged["n_examples"] == expected["n_examples"]
    assert read_summary(tmp_path / "task" / "summary.json")["tasks"][task]["metrics"] == expected["metrics"]
    if task == "mmlu":  # per subject and the macro average too; the limit applies before the split
        subjects = {"subject/anatomy", "subject/abstract_algebra", "subject/virology"}
        assert {k for k in merged["metrics"] if k.startswith("subject/")} == subjects | {f"{s}_stderr" for s in subjects}
        assert expected["n_examples"] == (4 + 5 + 3 if "limit=5" in extra else 4 + 6 + 3)
        # the rows max_seq_len touched, counted over all shards (the first shard's own count is not the run's)
        for key in ("rows_demos_dropped", "rows_truncated"):
            assert merged["settings"][key] == expected["settings"][key]
        assert (expected["settings"]["rows_demos_dropped"] > 0) == ("max_tokens=70" in extra)
    # a shard's records are its rows of the whole run, in order
    lines = (whole / f"{task}.predictions.jsonl").read_text().splitlines()
    first = [json.loads(x) for x in (dirs[1] / f"{task}.predictions.jsonl").read_text().splitlines()]
    assert first == [json.loads(x) for x in lines[counts[0]:counts[0] + counts[1]]]


def test_merge_refuses_shards_that_do_not_tile(setup, tmp_path):
    from emotune.errors import EmotuneError

    dirs = [shard_dir(tmp_path, k, 2) for k in (1, 2)]
    for k, d in enumerate(dirs, 1):
        assert run(setup, d, f"shard={k}/2") == 0
    with pytest.raises(EmotuneError, match="not shard 1/2"):
        merge_shards("trec", dirs[::-1], tmp_path / "m")
    with pytest.raises(EmotuneError, match="not shard 1/1"):
        merge_shards("trec", dirs[:1], tmp_path / "m")
    other = tmp_path / "other" / "shard-2-of-2"
    assert run(setup, other, "shard=2/2", "scoring=continuation") == 0
    with pytest.raises(EmotuneError, match="shard 2 was evaluated with other settings"):
        merge_shards("trec", [dirs[0], other], tmp_path / "m")
    assert not (tmp_path / "m").exists()  # nothing written from parts that do not belong together


def test_scorer_select_makes_the_whole_runs_calls_only(tiny_cache):
    """`select` gives bit-identical scores to the whole run for any range, with plain groups (no shared
    token) among shared-prefix ones, in both scoring paths, and runs fewer model calls. (Scoring a shard's
    groups on their own is not the same: the batches and the prefix common to the call change, and with
    them the last bits of some scores — 9 of 42 here on a CPU, up to 1e-8.)"""
    import random

    from emotune.eval.icl.scorer import score_groups

    tok = tiny_cache.load_tokenizer("eval")
    model = build_llama(None, len(tok), seed=3)
    rnd = random.Random(0)
    groups = []
    for i in range(19):
        if i % 5 == 3:  # candidates differing at their first token: scored in full, batched across groups
            groups.append([[rnd.randrange(3, len(tok)) for _ in range(rnd.randrange(2, 9))] for _ in range(3)])
        else:
            shared = [1] + [rnd.randrange(3, len(tok)) for _ in range(rnd.randrange(3, 30))]
            groups.append([shared + [rnd.randrange(3, len(tok)) for _ in range(rnd.randrange(1, 4))] for _ in range(3)])
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    for shared_prefix in (True, False):
        calls.clear()
        whole = score_groups(model, groups, batch_size=4, shared_prefix=shared_prefix)
        n_whole = len(calls)
        for a, b in ((0, 6), (6, 13), (13, 19), (7, 8)):
            calls.clear()
            part = score_groups(model, groups, batch_size=4, shared_prefix=shared_prefix, select=range(a, b))
            assert part.scores[a:b] == whole.scores[a:b] and part.predictions[a:b] == whole.predictions[a:b]
            assert all(s is None for s in part.scores[:a] + part.scores[b:])
            assert len(calls) < n_whole
