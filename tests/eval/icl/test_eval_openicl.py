"""Cross-check against OpenICL 0.1.8 itself: same retrieved ids (order too), prompt strings, scores (1e-5,
fp32) and predictions as OpenICL's TopkRetriever + PPLInferencer, for three tokenizer families — LLaMA-style
sentencepiece (BOS != EOS), GPT-2-style byte-level BPE (nothing prepended), OPT-style byte-level BPE (`</s>`
prepended, BOS == EOS) — each with a tiny model built from its config and saved locally, and tasks with 2, 4
and 6 labels of unequal token length; plus a template ported from OpenICL unchanged.

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

from test_eval_fixtures import TEMPLATES, TEST_TEXTS, TRAIN_TEXTS, build_family, one_torch_thread, rows  # noqa: E402, F401

from emotune.eval.icl.classification import openicl_ignore_id, prepare, run_icl_task, tokenize_groups  # noqa: E402
from emotune.eval.icl.retriever import TopkRetriever, resolve_encoder  # noqa: E402
from emotune.eval.icl.scorer import score_groups  # noqa: E402
from emotune.tasks.files import task_from_dict  # noqa: E402

ICE_NUM = 8


FAMILIES = ("llama", "gpt2", "opt")  # sentencepiece BOS != EOS; byte-level BPE, nothing prepended; `</s>` = BOS = EOS
# texts holding special-token strings: OpenICL's round trip (encode, decode without special tokens) drops them
# for the tokenizers that know them, so retrieval on the raw text would pick other demos; in the prompts they
# become EOS tokens in the middle, which OpenICL's PPL leaves out of the sum and the length
CROSS_TRAIN = TRAIN_TEXTS + ["</s> <s> </s> stocks <s> fell", "<|endoftext|> <|endoftext|> the team won <|endoftext|>",
                             "<s> <s> a dull film </s>", " what is the capital of tokyo ?"]
CROSS_TEST = TEST_TEXTS + ["<s> </s> <s> the final match", "<|endoftext|> boring <|endoftext|> movie"]


@pytest.fixture(scope="module", params=FAMILIES)
def checkpoint(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"openicl_{request.param}")
    build_family(d, request.param, seed=3)
    return d


@pytest.fixture
def shims(monkeypatch):
    import openicl.utils.collators as collators
    from transformers import PreTrainedTokenizerBase

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
    return tokenizer, TopkRetriever(None, cache_dir=tmp_path_factory.mktemp("cache"))  # default: OpenICL's round trip


def run_openicl(checkpoint, n_labels, out_dir, templates=None, column_token_map=None, max_model_token_num=None):
    from datasets import Dataset, DatasetDict
    from openicl import DatasetReader, PPLInferencer, PromptTemplate
    from openicl import TopkRetriever as OpenICLTopk

    ds = DatasetDict({"train": Dataset.from_list(rows(CROSS_TRAIN, n_labels)),
                      "test": Dataset.from_list(rows(CROSS_TEST, n_labels))})
    reader = DatasetReader(ds, input_columns=["text"], output_column="label")
    templates = templates or {k: "</E>" + v for k, v in TEMPLATES[n_labels].items()}
    template = PromptTemplate(templates, column_token_map or {"text": "<X>"}, ice_token="</E>")
    retriever = OpenICLTopk(reader, ice_num=ICE_NUM, sentence_transformers_model_name=resolve_encoder(None),
                            tokenizer_name=str(checkpoint), batch_size=1)
    captured = []
    real_retrieve = retriever.retrieve
    retriever.retrieve = lambda: captured.append(real_retrieve()) or captured[-1]  # record what inference uses
    inferencer = PPLInferencer(model_name=str(checkpoint), tokenizer_name=str(checkpoint), batch_size=4,
                               max_model_token_num=max_model_token_num,
                               output_json_filepath=str(out_dir), output_json_filename="predictions")
    predictions = inferencer.inference(retriever, ice_template=template)
    return captured[0], predictions, json.loads((out_dir / "predictions.json").read_text()), inferencer.model


def write_task(tmp_path, n_labels, templates, **keys):
    for split, texts in (("train", CROSS_TRAIN), ("test", CROSS_TEST)):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(texts, n_labels)))
    cfg = {"name": f"cross{n_labels}", "kind": "icl", "input_columns": ["text"], "label_column": "label",
           "ice_num": ICE_NUM, "templates": templates,
           "dataset": {"data_files": {"train": str(tmp_path / "train.jsonl"), "test": str(tmp_path / "test.jsonl")}}}
    if "column_token_map" in keys:  # OpenICL's name instead of ours
        del cfg["input_columns"]
    return task_from_dict({**cfg, **keys})


def assert_predictions_file_matches(out, result, log, labels, predictions, ids):
    """What `run_icl_task` wrote (the predictions file of `emotune eval`) against OpenICL's own log."""
    records = [json.loads(x) for x in (out / result.predictions).read_text().splitlines()]
    assert [r["demo_ids"] for r in records] == ids
    for i, r in enumerate(records):
        entry = log[str(i)]
        for label in labels:
            assert r["prompt_prefix"] + r["prompt_endings"][str(label)] == entry[f"label: {label}"]["prompt"]
            assert abs(r["scores"][str(label)] - entry[f"label: {label}"]["PPL"]) <= 1e-5
    assert [r["prediction"] for r in records] == predictions


@pytest.mark.parametrize("n_labels", [2, 4, 6])
def test_native_evaluator_matches_openicl(checkpoint, shims, ours, tmp_path, n_labels):
    ids, predictions, log, model = run_openicl(checkpoint, n_labels, tmp_path / "openicl")
    tokenizer, retriever = ours
    task = write_task(tmp_path, n_labels, TEMPLATES[n_labels])
    _, _, demo_ids, prompts, _ = prepare(task, retriever, tokenizer=tokenizer)
    assert demo_ids == ids  # same retrieved ids, most similar first
    # ... which the raw text would not give: the round trip matters on these texts
    raw = TopkRetriever(None, roundtrip_tokenizer=None)
    raw._model = retriever.model
    assert prepare(task, raw)[2] != ids

    labels = list(TEMPLATES[n_labels])
    groups = tokenize_groups(tokenizer, prompts)
    scored = score_groups(model, groups, rule="full", shared_prefix=True, batch_size=4,
                          ignore_id=openicl_ignore_id(tokenizer))
    for i in range(len(CROSS_TEST)):
        entry = log[str(i)]
        for j, label in enumerate(labels):
            assert prompts[i][j] == entry[f"label: {label}"]["prompt"]  # same prompt strings
            assert abs(scored.scores[i][j] - entry[f"label: {label}"]["PPL"]) <= 1e-5  # same scores
    assert [labels[p] for p in scored.predictions] == predictions  # same predictions
    # the test is only meaningful if the labels really compete: not every score is the same
    assert np.ptp(np.array(scored.scores)) > 1e-3

    # the whole path `emotune eval` runs, predictions file included
    result = run_icl_task(task, model, tokenizer, tmp_path / "ours", retriever=retriever, progress=False)
    assert_predictions_file_matches(tmp_path / "ours", result, log, labels, predictions, ids)
    assert result.settings["roundtrip_tokenizer"] == "model"


def test_long_prompts_lose_demos_as_in_openicl(checkpoint, shims, ours, tmp_path):
    """OpenICL's max_model_token_num (our max_tokens): labels in template order each drop the last demos
    while their prompt is too long, earlier labels keep theirs. 4 labels, the last one the longest."""
    tokenizer, retriever = ours
    task = write_task(tmp_path, 4, TEMPLATES[4])
    _, _, _, prompts, _ = prepare(task, retriever, tokenizer=tokenizer)
    lengths = sorted(max(len(ids) for ids in group) for group in tokenize_groups(tokenizer, prompts))
    limit = lengths[len(lengths) // 2]  # about half the rows lose demos
    ids, predictions, log, model = run_openicl(checkpoint, 4, tmp_path / "openicl", max_model_token_num=limit)
    result = run_icl_task(task, model, tokenizer, tmp_path / "ours", retriever=retriever, progress=False,
                          max_tokens=limit)
    records = [json.loads(x) for x in (tmp_path / "ours" / result.predictions).read_text().splitlines()]
    kept = [len(r["demo_ids"]) for r in records]
    # OpenICL's final (shortened) demo lists are its ids' prefixes
    assert_predictions_file_matches(tmp_path / "ours", result, log, list(TEMPLATES[4]), predictions,
                                    [i[:k] for i, k in zip(ids, kept)])
    assert 0 < result.settings["rows_demos_dropped"] < len(records) and result.settings["max_seq_len"] == limit
    assert any("demos_kept_by_label" in r for r in records)  # a later label dropped more than an earlier one


def test_openicl_templates_render_as_openicl(tmp_path_factory, shims, tmp_path):
    """A template ported from OpenICL unchanged (ice token in the middle, OpenICL-style placeholder)."""
    from transformers import AutoTokenizer

    checkpoint = tmp_path_factory.mktemp("openicl_templates")
    build_family(checkpoint, "opt", seed=5)
    templates = {0: "Sentiment.\n</E>Review: </text>\nIt is positive.", 1: "Sentiment.\n</E>Review: </text>\nIt is negative."}
    ids, predictions, log, model = run_openicl(checkpoint, 2, tmp_path / "openicl", templates, {"text": "</text>"})
    task = write_task(tmp_path, 2, templates, column_token_map={"text": "</text>"})
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    result = run_icl_task(task, model, tokenizer, tmp_path / "ours", progress=False,
                          retriever=TopkRetriever(None, cache_dir=tmp_path / "cache"))
    assert_predictions_file_matches(tmp_path / "ours", result, log, [0, 1], predictions, ids)


@pytest.mark.parametrize("templates, tokens", [
    ({0: "</E>Review: <X> It is positive.", 1: "</E>Review: <X> It is negative."}, {"text": "<X>"}),
    ({0: "Task.\n</E>Q: </text>\nA: yes", 1: "Task.\n</E>Q: </text>\nA: no"}, {"text": "</text>"}),
    ({0: "</q> means yes</E>", 1: "</q> means no</E>"}, {"text": "</q>"}),  # demos at the end
    ({0: "</E><X1>? Yes, <X2>", 1: "</E><X1>? No, <X2>"}, {"premise": "<X1>", "hypothesis": "<X2>"}),
    ({0: "Review: <X> It is positive.", 1: "Review: <X> It is negative."}, {"text": "<X>"}),  # our short form
])
def test_template_rendering_is_openicls(templates, tokens):
    """Demos and candidate prompts as OpenICL's PromptTemplate renders them, data holding placeholders too."""
    from openicl import PromptTemplate

    keys = {"column_token_map": tokens} if len(tokens) > 1 or "<X>" not in tokens.values() else {}
    task = task_from_dict({"name": "t", "kind": "icl", "templates": templates,
                           **(keys or {"input_columns": list(tokens)})})
    ported = {k: v if "</E>" in v else "</E>" + v for k, v in templates.items()}
    reference = PromptTemplate(ported, tokens, ice_token="</E>")
    row = {c: f"value of {c} with {t} inside" for c, t in tokens.items()}  # OpenICL replaces those too
    ice = "a demo quoting " + " and ".join(tokens.values()) + "\n"
    for label in templates:
        assert task.fill(label, row) == reference.generate_ice_item(row, label)
        assert task.prompt(label, row, ice) == reference.generate_label_prompt_item(row, ice, label)


def test_multiple_choice_templates_show_only_their_own_answer():
    """OpenICL's commonsense_qa style: each template holds the question and one answer's placeholder."""
    from openicl import PromptTemplate

    tokens = {"question": "</Q>", "A": "</Ans1>", "B": "</Ans2>"}
    templates = {"A": "</E>Answer the following question:\n</Q>\nAnswer: </Ans1>",
                 "B": "</E>Answer the following question:\n</Q>\nAnswer: </Ans2>"}
    task = task_from_dict({"name": "csqa", "kind": "icl", "column_token_map": tokens, "templates": templates,
                           "label_column": "answerKey"})
    reference = PromptTemplate(templates, tokens, ice_token="</E>")
    row = {"question": "Where do fish live?", "A": "water", "B": "trees"}
    for label in templates:
        assert task.fill(label, row) == reference.generate_ice_item(row, label)
        assert task.prompt(label, row, "demo\n") == reference.generate_label_prompt_item(row, "demo\n", label)
