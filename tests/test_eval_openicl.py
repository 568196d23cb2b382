"""Cross-check against OpenICL 0.1.8 itself: same retrieved ids, prompt strings, scores (1e-5, fp32) and
predictions as OpenICL's TopkRetriever + PPLInferencer, on a tiny LLaMA saved locally and in-memory tasks
with 2, 4 and 6 labels of unequal token length.

OpenICL is a test-only dependency (its wheel pins transformers 4.28): install it with
`pip install openicl==0.1.8 --no-deps` plus `rank_bm25 openai` and `evaluate --no-deps`. Two shims for
transformers 5 live here, not in the package: tokenizers lost `encode_plus` (its DatasetEncoder calls it),
and `BatchEncoding.to` now passes `non_blocking=` (its collator's ListWrapper.to does not accept it).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

try:
    import openicl  # noqa: F401
except ImportError:  # the Makefile's test install puts it there; elsewhere: skip (laptop) or fail (CI)
    from system_programs import require

    require(["openicl==0.1.8"], "the OpenICL cross-check", "pip install --no-deps openicl==0.1.8 evaluate==0.4.6; "
            "pip install rank_bm25==0.2.2 openai==3.57.0 (make test does)")

from emotune.eval.icl import openicl_ignore_id, prepare, tokenize_groups  # noqa: E402
from emotune.eval.retriever import TopkRetriever, resolve_encoder  # noqa: E402
from emotune.eval.scorer import score_groups  # noqa: E402
from emotune.eval.tasks import task_from_dict  # noqa: E402
from test_eval_fixtures import (TEMPLATES, TEST_TEXTS, TRAIN_TEXTS, build_llama, build_tokenizer,  # noqa: E402, F401
                                one_torch_thread, rows)

ICE_NUM = 8


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("openicl_ckpt")
    tok = build_tokenizer(d)
    build_llama(d, len(tok), seed=3)
    return d


@pytest.fixture
def shims(monkeypatch):
    from transformers import PreTrainedTokenizerBase

    import openicl.utils.collators as collators

    monkeypatch.setattr(PreTrainedTokenizerBase, "encode_plus", lambda self, *a, **k: self(*a, **k), raising=False)
    monkeypatch.setattr(collators.ListWrapper, "to", lambda self, *a, **k: self.data)
    # not a shim, only speed: load the (real) sentence encoder once for all runs
    import openicl.icl_retriever.icl_topk_retriever as topk
    from sentence_transformers import SentenceTransformer

    monkeypatch.setattr(topk, "SentenceTransformer", _cached_encoder(SentenceTransformer))


_ENCODERS: dict = {}


def _cached_encoder(cls):
    def load(name):
        if name not in _ENCODERS:
            _ENCODERS[name] = cls(name)
        return _ENCODERS[name]

    return load


@pytest.fixture(scope="module")
def ours(checkpoint, tmp_path_factory):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    return tokenizer, TopkRetriever(None, cache_dir=tmp_path_factory.mktemp("cache"), roundtrip_tokenizer=tokenizer)


def run_openicl(checkpoint, n_labels, out_dir):
    from datasets import Dataset, DatasetDict
    from openicl import DatasetReader, PPLInferencer, PromptTemplate
    from openicl import TopkRetriever as OpenICLTopk

    ds = DatasetDict({"train": Dataset.from_list(rows(TRAIN_TEXTS, n_labels)),
                      "test": Dataset.from_list(rows(TEST_TEXTS, n_labels))})
    reader = DatasetReader(ds, input_columns=["text"], output_column="label")
    template = PromptTemplate({k: "</E>" + v for k, v in TEMPLATES[n_labels].items()}, {"text": "<X>"},
                              ice_token="</E>")
    retriever = OpenICLTopk(reader, ice_num=ICE_NUM, sentence_transformers_model_name=resolve_encoder(None),
                            tokenizer_name=str(checkpoint), batch_size=1)
    captured = []
    real_retrieve = retriever.retrieve
    retriever.retrieve = lambda: captured.append(real_retrieve()) or captured[-1]  # record what inference uses
    inferencer = PPLInferencer(model_name=str(checkpoint), tokenizer_name=str(checkpoint), batch_size=4,
                               output_json_filepath=str(out_dir), output_json_filename="predictions")
    predictions = inferencer.inference(retriever, ice_template=template)
    return captured[0], predictions, json.loads((out_dir / "predictions.json").read_text()), inferencer.model


@pytest.mark.parametrize("n_labels", [2, 4, 6])
def test_native_evaluator_matches_openicl(checkpoint, shims, ours, tmp_path, n_labels):
    ids, predictions, log, model = run_openicl(checkpoint, n_labels, tmp_path / "openicl")
    tokenizer, retriever = ours
    task = task_from_dict({"name": f"cross{n_labels}", "kind": "icl", "input_columns": ["text"],
                           "label_column": "label", "ice_num": ICE_NUM, "templates": TEMPLATES[n_labels],
                           "dataset": {"data_files": {"train": str(tmp_path / "train.jsonl"),
                                                      "test": str(tmp_path / "test.jsonl")}}})
    for split, texts in (("train", TRAIN_TEXTS), ("test", TEST_TEXTS)):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(texts, n_labels)))
    _, _, demo_ids, prompts, _ = prepare(task, retriever)
    assert demo_ids == ids  # same retrieved ids, most similar first

    labels = list(TEMPLATES[n_labels])
    groups = tokenize_groups(tokenizer, prompts)
    scored = score_groups(model, groups, rule="full", shared_prefix=True, batch_size=4,
                          ignore_id=openicl_ignore_id(tokenizer))
    for i in range(len(TEST_TEXTS)):
        entry = log[str(i)]
        for j, label in enumerate(labels):
            assert prompts[i][j] == entry[f"label: {label}"]["prompt"]  # same prompt strings
            assert abs(scored.scores[i][j] - entry[f"label: {label}"]["PPL"]) <= 1e-5  # same scores
    assert [labels[p] for p in scored.predictions] == predictions  # same predictions
    # the test is only meaningful if the labels really compete: not every score is the same
    assert np.ptp(np.array(scored.scores)) > 1e-3
