"""Calibration at the synthetic language's branch points (emotune.eval.calibration), against brute force: the
model's branch mass from one forward pass per prefix, the oracle's exact masses, EMO's optimum solved per
context; the base checkpoint's head found through the manifest; the model-free part cached."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from eval_builders import demo_language_world  # noqa: F401  (autouse: one torch thread)

from emotune.eval import calibration as calib
from emotune.eval.oracle_task import _model_log_probs
from emotune.synthetic.language import load_demo_language
from emotune.synthetic.oracle import TokenOracle
from emotune.synthetic.population import cost_matrix, population_optimum


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("calib")
    data, tok, cfg = demo_language_world(root, n_valid=6, n_test=2, tie_word_embeddings=False)
    base = LlamaForCausalLM(cfg)
    base.save_pretrained(str(root / "runs" / "pretrain" / "final"))
    torch.manual_seed(1)
    tuned = LlamaForCausalLM(cfg).eval()
    ckpt = root / "runs" / "emo" / "checkpoint-5"
    tuned.save_pretrained(str(ckpt))
    (ckpt / "manifest.json").write_text(json.dumps({"model": "runs/pretrain/final", "step": 5}))
    model = LlamaForCausalLM.from_pretrained(str(ckpt)).eval()
    lang = load_demo_language(data)
    texts = (data / "valid.txt").read_text().splitlines()
    return root, data, model, base, TokenOracle(lang, tok, vocab_size=len(tok)), texts


def test_masses_against_brute_force(setup, monkeypatch, tmp_path):
    root, data, model, base, oracle, texts = setup
    monkeypatch.chdir(tmp_path)  # the manifest's relative path is found from the checkpoint's parent folders
    metrics, settings = calib.calibration_metrics(_model_log_probs(model, [oracle.encode(t) for t in texts]),
                                                  oracle, texts, model, tmp_path)
    assert settings["cost_embedding"] == f"LM head of {root / 'runs' / 'pretrain' / 'final'}"
    lang = oracle.lang
    cls = [lang.concept_class[c] for c in lang.emission.argmax(0)]
    cost = cost_matrix(base.lm_head.weight.detach().double().numpy())
    dot_words = {"det": [w for w in range(lang.n_words) if cls[w] == "DET"], "it": [lang.words.index("it")]}
    brute: dict[str, list[float]] = {}
    n_ctx = 0
    for text in texts:
        ids = lang.word_ids(text)
        for t, w in enumerate(ids, start=1):
            if cls[w] != "DOT":
                continue
            n_ctx += 1
            prefix = torch.tensor([oracle.encode(text)[: t + 1]])
            with torch.no_grad():
                q = torch.softmax(model(prefix).logits[0, -1].double(), -1).numpy()
            p = oracle.next_token_probs(ids[:t])
            opt = population_optimum(p, cost, "emo1")
            for name, qq in (("model", q), ("oracle", p), ("opt", opt)):
                for branch, words in dot_words.items():
                    brute.setdefault(f"{name}/{branch}", []).append(qq[oracle.word_token[words]].sum())
                brute.setdefault(f"{name}/end", []).append(qq[oracle.eos])
    assert n_ctx > 0 and metrics["calib/dot/contexts"] == n_ctx
    for branch in ("det", "it", "end"):
        assert metrics[f"calib/dot/{branch}"] == pytest.approx(np.mean(brute[f"model/{branch}"]), abs=1e-9)
        assert metrics[f"calib/dot/{branch}/oracle"] == pytest.approx(np.mean(brute[f"oracle/{branch}"]), abs=1e-12)
        assert metrics[f"calib/dot/{branch}/emo1_optimum"] == pytest.approx(np.mean(brute[f"opt/{branch}"]), abs=1e-9)
    # the grammar after ".": a determiner 55 %, "it" 25 %, the end 20 %, whatever the topic
    assert [metrics[f"calib/dot/{b}/oracle"] for b in ("det", "it", "end")] == pytest.approx([0.55, 0.25, 0.20])
    assert sum(metrics[f"calib/noun/{b}/emo2_optimum"] for b in ("verb", "prep", "dot")) == pytest.approx(1.0)

    # the model-free part is cached: a second call solves nothing
    monkeypatch.setattr(calib, "population_optimum", lambda *a, **k: pytest.fail("recomputed a cached optimum"))
    again, _ = calib.calibration_metrics(_model_log_probs(model, [oracle.encode(t) for t in texts]),
                                         oracle, texts, model, tmp_path)
    assert again == metrics


def test_without_a_manifest_the_models_own_head(setup, tmp_path, monkeypatch):
    _, _, model, _, oracle, texts = setup
    monkeypatch.setattr(model.config, "_name_or_path", str(tmp_path))  # a folder with no manifest.json
    _, settings = calib.calibration_metrics(_model_log_probs(model, [oracle.encode(t) for t in texts[:2]]),
                                            oracle, texts[:2], model, None)
    assert settings["cost_embedding"] == "the evaluated model's own LM head"


def test_contexts_capped_evenly(setup):
    *_, oracle, texts = setup
    full = calib.branch_contexts(oracle, texts, limit=10_000)["noun"]
    capped = calib.branch_contexts(oracle, texts, limit=5)["noun"]
    assert len(full) > 5 and len(capped) == 5 and capped[0] == full[0] and capped[-1] == full[-1]
