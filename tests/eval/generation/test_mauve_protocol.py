"""The one MAUVE protocol (eval/generation/protocol.py): windows, exact lengths, the EOS rules, runs and their
spread, the ceiling, all against mauve-text's own compute_mauve; and the shipped task files against the
paper's Table 4."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_generation_fixtures import MARKETS, SPORTS, build_llama, build_tokenizer, one_thread, sentences  # noqa: F401

from emotune.errors import EmotuneError
from emotune.eval.generation import protocol
from emotune.eval.generation.sampling import row_seed, sample_runs
from emotune.tasks.schema import GenerationTaskFile, OracleTaskFile

TASKS = Path(__file__).resolve().parents[3] / "emotune" / "configs" / "eval" / "tasks"
EOS = 2


def test_windows_start_at_document_starts_and_run_over_document_ends():
    docs = [[1, 10, 11, 2], [1, 20, 21, 22, 23, 2], [1, 30, 2], [1, 40, 41, 42, 2]]
    stream = [t for d in docs for t in d]
    wins = protocol.stream_windows(docs, 3, 5)
    assert [w.start for w in wins] == [0, 4, 10]  # the 4th document start leaves no room for 3 + 5 tokens
    for w in wins:
        assert len(w.prefix) == 3 and len(w.reference) == 5 and w.prefix[0] == 1
        assert w.prefix + w.reference == stream[w.start : w.start + 8]  # the held-out stream's own next tokens
    assert EOS in wins[0].reference and 1 in wins[0].reference  # a document end and the next start inside
    assert [w.start for w in protocol.stream_windows(docs, 3, 5, n=2)] == [0, 4]
    with pytest.raises(EmotuneError):
        protocol.stream_windows(docs, 0, 5)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    tok = build_tokenizer(tmp_path_factory.mktemp("protocol"))
    return build_llama(None, len(tok), seed=3, scale=2.0), tok


def _prompts(tok):
    return [tok(t)["input_ids"] for t in sentences(SPORTS, 3, 4, 5) + sentences(MARKETS, 3, 7, 6)]


def test_eos_ignored_exactly_g_tokens_and_eos_neither_stops_nor_is_masked(lm):
    model, tok = lm
    prompts = _prompts(tok)
    eos_bias = torch.zeros(len(tok))
    eos_bias[EOS] = 3.0  # EOS likely but not certain: it shows up early and often
    handle = model.lm_head.register_forward_hook(lambda m, i, out: out + eos_bias)
    try:
        ignore = sample_runs(model, prompts, list(range(6)), 2, 0, 12, "ignore", [EOS], 0)
        paper = sample_runs(model, prompts, list(range(6)), 2, 0, 12, "min_new_tokens", [EOS], 0)
        again = sample_runs(model, prompts[::-1], list(range(6))[::-1], 2, 0, 12, "ignore", [EOS], 0, batch_size=4)
    finally:
        handle.remove()
    assert len(ignore) == 2 and all(len(run) == len(prompts) for run in ignore)
    assert all(len(s) == 12 for run in ignore for s in run)  # exactly G, whatever was drawn
    # not masked: EOS is drawn before the end; not a stop: tokens follow it
    assert any(EOS in s[:-1] for run in ignore for s in run)
    assert any(s.index(EOS) < 11 and any(t != 0 for t in s[s.index(EOS) + 1 :]) for run in ignore for s in run
               if EOS in s)
    # the paper's rule: EOS masked before G tokens, and it ends the sample at G + 1
    assert all(len(s) in (12, 13) and EOS not in s[:12] for run in paper for s in run)
    assert any(len(s) == 13 and s[-1] == EOS for run in paper for s in run)
    assert ignore[0] != ignore[1]  # runs are independent draws
    assert [run[::-1] for run in again] == ignore  # seeded per (run, key): batch and order do not matter
    with pytest.raises(EmotuneError):
        sample_runs(model, prompts, list(range(6)), 1, 0, 4, "stop", [EOS], 0)
    assert row_seed(0, 1, 5) != row_seed(0, 0, 5)


def _features(n, shift, seed, dim=8):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, dim)) + shift).astype(np.float32)


def test_runs_mean_std_and_ceiling_equal_mauve_text():
    import mauve

    p = _features(60, 0.0, 0)
    q_runs = [_features(60, 0.6, 10 + r) for r in range(5)]
    ceiling_runs = [_features(60, 0.0, 20 + r) for r in range(5)]
    ceiling = protocol.run_scores(p, ceiling_runs)
    m = protocol.protocol_metrics(p, q_runs, ceiling)
    want = [mauve.compute_mauve(p_features=p, q_features=q, verbose=False).mauve for q in q_runs]
    want_ceiling = [mauve.compute_mauve(p_features=p, q_features=q, verbose=False).mauve for q in ceiling_runs]
    assert [m[f"mauve/run{r}"] for r in range(5)] == pytest.approx(want, abs=1e-9)
    assert m["mauve"] == pytest.approx(np.mean(want)) and m["mauve_std"] == pytest.approx(np.std(want, ddof=1))
    assert m["mauve_runs"] == 5 and m["mauve_prefixes"] == 60
    assert m["mauve_ceiling"] == pytest.approx(np.mean(want_ceiling))
    assert m["mauve_ceiling_std"] == pytest.approx(np.std(want_ceiling, ddof=1))
    assert m["mauve"] < m["mauve_ceiling"]  # the shifted model side scores below the reference's own
    with pytest.raises(EmotuneError):  # one sample per prefix in every run
        protocol.protocol_metrics(p, [q_runs[0][:50]], ceiling)


def test_split_half_ceiling_is_mauve_text_on_two_disjoint_halves():
    import mauve

    human = _features(40, 0.0, 3)
    scores = protocol.split_half_ceiling(human, 3, seed=7)
    assert len(scores) == 3 and scores == protocol.split_half_ceiling(human, 3, seed=7)
    perm = np.random.default_rng([7, 1, 7]).permutation(40)
    want = mauve.compute_mauve(p_features=human[perm[:20]], q_features=human[perm[20:]], verbose=False).mauve
    assert scores[1] == pytest.approx(want, abs=1e-9)
    with pytest.raises(EmotuneError):
        protocol.split_half_ceiling(human[:3], 1, 0)


# The paper's Table 4 (prefix / generation length per dataset; texts >= P + G + 10 words; min_new_tokens = G)
TABLE_4 = {"generation-wikitext2": (20, 80), "generation-wikitext103": (20, 80), "generation-webtext": (20, 80),
           "generation-ptb": (5, 25), "generation-writingprompts": (35, 80), "generation-agnews": (10, 30)}


@pytest.mark.parametrize("name", sorted(TABLE_4))
def test_shipped_generation_tasks_keep_table_4(name):
    raw = yaml.safe_load((TASKS / f"{name}.yaml").read_text())
    f = GenerationTaskFile(**raw)
    assert (f.prefix_words, f.continuation_words) == TABLE_4[name]
    assert f.new_tokens == f.continuation_words  # min_new_tokens = G
    assert f.eos == "min_new_tokens"  # the paper's generate call
    assert f.prefix_filter.extra_words == 10 and f.prefix_filter.min_chars == 100
    assert f.prefix_filter.max_rows == 4000 and f.prefix_filter.exclude == ["=="]
    assert (f.options or {}).get("runs", 5) == 5


def test_shipped_oracle_task_is_the_demo_protocol():
    f = OracleTaskFile(**yaml.safe_load((TASKS / "synthetic_oracle.yaml").read_text()))
    assert (f.mauve_prefix_tokens, f.mauve_new_tokens) == (20, 80)
    assert f.mauve_eos == "ignore" and f.mauve_runs == 5 and f.mauve_prefixes >= 256
    assert f.mauve_max_length == "auto"  # the featuriser covers the whole text
    assert f.mauve_pooling == "mean"  # features of the whole window, not its last token


def test_the_eos_rule_is_a_task_key():
    from emotune.eval.generation.task import spec_from_task

    raw = yaml.safe_load((TASKS / "generation-wikitext2.yaml").read_text())
    assert spec_from_task(raw).eos == "min_new_tokens"
    assert spec_from_task({**raw, "eos": "ignore"}).eos == "ignore"
    with pytest.raises(EmotuneError, match="eos"):
        spec_from_task({**raw, "eos": "stop"})
