"""`kind: oracle` through the evaluator: the shipped task file, `emotune eval`'s summary, the oracle's metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from eval_builders import demo_language_world  # noqa: F401  (autouse: one torch thread)

from emotune.cli import main as emotune
from emotune.eval.oracle_task import oracle_cross_entropies, oracle_perplexity_of_samples
from emotune.eval.oracle_task import test_perplexity as perplexity
from emotune.synthetic.language import load_demo_language
from emotune.synthetic.oracle import TokenOracle


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("oracle")
    data, tok, cfg = demo_language_world(root, n_valid=8, n_test=8)
    LlamaForCausalLM(cfg).save_pretrained(str(root / "model"))
    tok.save_pretrained(str(root / "model"))
    return root, data


SMALL = ("name: synthetic_oracle\nkind: oracle\nn_samples: 3\nmax_new_tokens: 12\nn_texts: 5\nseed: 0\n"
         "mauve_prefixes: 6\nmauve_prefix_tokens: 5\nmauve_new_tokens: 8\nmauve_runs: 2\nfeaturizer: ../model\n"
         "mauve_pooling: mean\n")


def test_oracle_task_reports_the_oracle_metrics(demo, tmp_path):
    import mauve
    from transformers import AutoTokenizer, LlamaForCausalLM

    from emotune.eval.generation.mauve import Featurizer
    from emotune.eval.generation.sampling import sample_runs
    from emotune.eval.oracle_task import oracle_continuation

    root, data = demo
    task = tmp_path / "oracle.yaml"  # the shipped task, smaller; the featuriser: a model folder next to data_dir
    task.write_text(SMALL)
    out = tmp_path / "out"
    assert emotune(["eval", "--model", str(root / "model"), "--tasks", str(task), "--out", str(out),
                    f"data_dir={data}", "progress=false"]) == 0
    result = json.loads((out / "summary.json").read_text())["tasks"]["synthetic_oracle"]
    assert result["kind"] == "oracle" and result["n_examples"] == 10

    # the same metrics, composed here from the oracle's functions and mauve-text itself
    model = LlamaForCausalLM.from_pretrained(str(root / "model")).eval()
    tok = AutoTokenizer.from_pretrained(str(root / "model"))
    lang = load_demo_language(data)
    oracle = TokenOracle(lang, tok, vocab_size=model.config.vocab_size)
    valid = [t for t in (data / "valid.txt").read_text().splitlines() if t.strip()][:5]
    test = [t for t in (data / "test.txt").read_text().splitlines() if t.strip()][:5]
    ce = oracle_cross_entropies(model, oracle, valid, 1e-6)
    samples = oracle_perplexity_of_samples(model, tok, lang, n_samples=3, max_new_tokens=12, seed=0, eps=1e-6)
    # MAUVE by the protocol: the held-out stream (test then validation texts, each <s> words </s>), a window
    # from each of the first 6 document starts, 5 prefix tokens, the stream's next 8 as the reference
    held_out = [t for f in ("test.txt", "valid.txt") for t in (data / f).read_text().splitlines() if t.strip()]
    docs = [tok(t)["input_ids"] + [tok.eos_token_id] for t in held_out]
    assert all(d[0] == tok.bos_token_id for d in docs)
    stream = [t for d in docs for t in d]
    starts = list(np.cumsum([0] + [len(d) for d in docs])[:6])
    prefixes = [stream[s : s + 5] for s in starts]
    refs = [stream[s + 5 : s + 13] for s in starts]
    runs = sample_runs(model, prefixes, starts, 2, 0, 8, "ignore", [tok.eos_token_id], 0)
    language = [[oracle_continuation(oracle, pre, 8, np.random.default_rng([0, r, s, 2]))
                 for pre, s in zip(prefixes, starts)] for r in range(2)]
    assert all(len(x) == 8 for run in runs + language for x in run)  # equal lengths: exactly G on every side

    def text(pre, cont):
        return tok.decode(pre[1:] + cont, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    fz = Featurizer(str(root / "model"), max_length=64, pooling="mean")
    p = fz([text(pre, ref) for pre, ref in zip(prefixes, refs)])
    scores = [mauve.compute_mauve(p_features=p, q_features=fz([text(pre, s) for pre, s in zip(prefixes, run)]),
                                  verbose=False).mauve for run in runs]
    ceiling = [mauve.compute_mauve(p_features=p, q_features=fz([text(pre, s) for pre, s in zip(prefixes, run)]),
                                   verbose=False).mauve for run in language]
    want = {"ppl_test": perplexity(model, oracle, test), "ppl_oracle": samples["ppl_oracle"],
            "forward_ce": ce["forward_ce"], "reverse_ce": ce["reverse_ce"], "samples_ended": samples["ended_fraction"],
            "samples_mean_length": samples["mean_length"], "mauve": np.mean(scores),
            "mauve_std": np.std(scores, ddof=1), "mauve_runs": 2, "mauve_prefixes": 6,
            "mauve_ceiling": np.mean(ceiling), "mauve_ceiling_std": np.std(ceiling, ddof=1),
            "mauve/run0": scores[0], "mauve/run1": scores[1]}
    assert len(samples["texts"]) == 3 and 0 < want["mauve"] <= 1
    settings = result["settings"]["mauve"]
    assert settings["featurizer"].startswith(str((root / "model").resolve())) and settings["truncated_texts"] == 0
    assert (settings["prefix_tokens"], settings["new_tokens"], settings["eos"], settings["pooling"]) == (5, 8, "ignore", "mean")
    assert len(list((data / "mauve-features").glob("*ceiling*.json"))) == 1  # the language side, kept for later
    # plus the branch-point calibration (tests/eval/test_calibration.py checks its values)
    assert {k for k in result["metrics"] if not k.startswith("calib/")} == set(want)
    assert result["metrics"]["calib/dot/end/oracle"] == pytest.approx(0.2)
    for key, value in want.items():
        assert math.isfinite(value) and result["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-9), key


def test_language_continuation_follows_the_oracle_and_the_packing(demo):
    from transformers import AutoTokenizer

    from emotune.eval.oracle_task import oracle_continuation

    root, data = demo
    tok = AutoTokenizer.from_pretrained(str(root / "model"))
    lang = load_demo_language(data)
    oracle = TokenOracle(lang, tok)
    text = [t for t in (data / "test.txt").read_text().splitlines() if t.strip()][0]
    words = text.split()[:3]
    prefix = oracle.encode(" ".join(words))
    p = oracle.next_token_probs(lang.word_ids(" ".join(words)))
    n = 3000
    rng = np.random.default_rng(0)
    draws = [oracle_continuation(oracle, prefix, 1, rng)[0] for _ in range(n)]
    freq = np.bincount(draws, minlength=len(p))[: len(p)] / n
    assert np.all(np.abs(freq - p) <= 4 * np.sqrt(p * (1 - p) / n) + 1.5 / n)  # the exact next-token distribution
    # after a document end the next document starts (BOS), and a continuation may cross several documents
    after_end = oracle_continuation(oracle, oracle.encode(text) + [oracle.eos], 40, np.random.default_rng(1))
    assert after_end[0] == oracle.bos and len(after_end) == 40
    for i, t in enumerate(after_end[:-1]):
        if t == oracle.eos:
            assert after_end[i + 1] == oracle.bos


def test_oracle_task_without_data_dir_is_one_line(demo, tmp_path, capsys):
    root, _ = demo
    assert emotune(["eval", "--model", str(root / "model"), "--tasks", "synthetic_oracle", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err  # (transformers' weight-loading progress bar may come first)
    last = err.strip().splitlines()[-1]
    assert last.startswith("emotune eval: error: ") and "needs data_dir" in last and "Traceback" not in err


def test_oracle_task_without_mauve(demo, tmp_path):
    root, data = demo
    task = tmp_path / "oracle.yaml"
    task.write_text("name: synthetic_oracle\nkind: oracle\nn_samples: 2\nmax_new_tokens: 4\nn_texts: 2\nfeaturizer: none\n")
    assert emotune(["eval", "--model", str(root / "model"), "--tasks", str(task), "--out", str(tmp_path / "o"),
                    f"data_dir={data}", "progress=false"]) == 0
    metrics = json.loads((tmp_path / "o" / "summary.json").read_text())["tasks"]["synthetic_oracle"]["metrics"]
    assert "mauve" not in metrics and "ppl_oracle" in metrics


def test_oracle_task_featurizer_that_is_no_model_is_one_line(demo, tmp_path, capsys):
    root, data = demo
    task = tmp_path / "oracle.yaml"
    task.write_text(SMALL.replace("../model", "../nowhere"))
    assert emotune(["eval", "--model", str(root / "model"), "--tasks", str(task), "--out", str(tmp_path / "o"),
                    f"data_dir={data}", "progress=false"]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "featurizer '../nowhere'" in last and "Traceback" not in err
