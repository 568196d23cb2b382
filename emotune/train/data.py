"""Training data: raw text packed into blocks, Alpaca-format instructions with the prompt masked, or
conversations rendered with the tokenizer's chat template, loss on the assistant turns (chat.py).

Raw text (continual fine-tuning, language modelling): by default as HF `run_clm.py`'s `group_texts` (the
EMO paper's code): every document (a line of a .txt file, the text column of a .jsonl/.parquet file or hub
dataset) is `tokenizer(text)`, its own special tokens and no EOS (`data.add_eos` appends one), groups of
1000 documents are concatenated and cut into `block_size` blocks, each group's remainder dropped
(`data.packing: stream` = one group). Labels are the input ids (the loss shifts them).

Instructions (Alpaca format: instruction / input / output): prompt = the Alpaca template, target =
output + EOS. Prompt tokens get label -100, so only response tokens (+EOS) are targets. Examples longer
than `max_length` are truncated; those whose response is cut away entirely are counted and dropped.

Records are read and checked in records.py. Tokenisation is done once, by rank 0 first, and cached as a
.npz keyed by the data, the tokenizer (its chat template included) and the settings; other ranks (and
later runs) load the cache. The batches of a split are in batches.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from emotune.atomic import atomic_open
from emotune.errors import EmotuneError
from emotune.objectives.common import IGNORE_INDEX
from emotune.prompts import ALPACA_PROMPT_INPUT, ALPACA_PROMPT_NO_INPUT, alpaca_prompt  # noqa: F401  (re-exported)
from emotune.train import chat
from emotune.train.records import (  # noqa: F401  (re-exported: data.py is the entry point of the data path)
    MISSING,
    RawSplits,
    _fingerprint_files,
    _read_local,
    check_local_files,
    check_record,
    field_of,
    read_records,
    texts_of,
)

log = logging.getLogger("emotune.data")

# the Alpaca template lives below both stages: the evaluator renders the prompt the model was trained on
PROMPT_INPUT, PROMPT_NO_INPUT = ALPACA_PROMPT_INPUT, ALPACA_PROMPT_NO_INPUT


def _text(row: dict, column: str) -> str:
    value = field_of(row, column)
    return "" if value is MISSING or value is None else str(value)


def tokenizer_training_texts(cfg) -> list[str]:
    """What a tokenizer trained on the spot (model.train_tokenizer_vocab_size) learns from: the training split."""
    d = cfg.data
    train = read_records(cfg).train
    if d.format == "text":
        return texts_of(train, d.text_column, "training data")
    if d.format == "chat":
        return chat.training_texts(train, d)
    return [" ".join(_text(r, c) for c in (d.instruction_column, d.input_column, d.output_column)) for r in train] + \
        [PROMPT_INPUT, PROMPT_NO_INPUT]


# ----------------------------------------------------------------------------------------------
# tokenisation

def _batched(items: list, n: int = 1000) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def pack_texts(texts: Iterable[str], tokenizer, block_size: int, add_eos: bool = False, skip_empty: bool = True,
               max_blocks: int | None = None, group_size: int | None = None) -> tuple[np.ndarray, dict]:
    """Tokenise documents, concatenate and cut into `[N, block_size]` blocks.

    Each document is `tokenizer(text)["input_ids"]` (the tokenizer's own special tokens), plus EOS with
    `add_eos`. `group_size`: documents per group, each group concatenated and cut on its own and its
    remainder dropped, as HF run_clm's `group_texts` under `datasets.map(batched=True)` (1000); None = one
    group, the whole stream (only the last remainder dropped)."""
    texts = [t for t in texts if not (skip_empty and not t.strip())]
    if add_eos and tokenizer.eos_token_id is None:
        raise EmotuneError("data.add_eos is set but the tokenizer has no EOS token")
    blocks: list[np.ndarray] = []  # numpy per group of documents: WikiText-103 is ~120M tokens
    n_docs = n_tokens = n_blocks = dropped = 0
    for group in _batched(texts, group_size or max(len(texts), 1)):
        chunks = []
        for batch in _batched(group):
            encoded = tokenizer(batch, add_special_tokens=True)["input_ids"]
            if add_eos:
                encoded = [ids + [tokenizer.eos_token_id] for ids in encoded]
            chunks.append(np.fromiter((t for ids in encoded for t in ids), dtype=np.int64))
            n_docs += len(encoded)
            if group_size is None and max_blocks is not None and \
                    (sum(len(c) for c in chunks) // block_size) >= max_blocks:
                break  # enough text tokenised for the requested number of blocks
        buf = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
        n = len(buf) // block_size
        n_tokens += len(buf)
        dropped += len(buf) - n * block_size
        blocks.append(buf[: n * block_size].reshape(n, block_size))
        n_blocks += n
        if max_blocks is not None and n_blocks >= max_blocks:
            break
    out = np.concatenate(blocks) if blocks else np.zeros((0, block_size), np.int64)
    if max_blocks is not None:
        out = out[:max_blocks]
    return out, {"documents": n_docs, "tokens": n_tokens, "blocks": len(out), "dropped_tail_tokens": dropped,
                 "packing": "stream" if group_size is None else f"group_texts/{group_size}"}


def tokenize_instruction(tokenizer, instruction: str, input_: str | None, output: str,
                         max_length: int) -> tuple[list[int], list[int], bool]:
    """`(input_ids, labels, truncated)`: prompt labels -100, response + EOS are targets."""
    prompt_ids = tokenizer(alpaca_prompt(instruction, input_), add_special_tokens=True)["input_ids"]
    response_ids = tokenizer(output, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = prompt_ids + response_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + response_ids
    truncated = len(ids) > max_length
    return ids[:max_length], labels[:max_length], truncated


def tokenize_instructions(records: list[dict], tokenizer, d, max_examples: int | None = None, where: str = "data") -> tuple[list, dict]:
    if tokenizer.eos_token_id is None:
        raise EmotuneError("instruction tuning needs a tokenizer with an EOS token")
    for n, r in enumerate(records, 1):  # every record: a missing response must not train as an empty one
        for col in (d.instruction_column, d.output_column):
            if field_of(r, col) is MISSING:
                raise EmotuneError(f"{where}: record {n} has no column {col!r} (columns: {sorted(r)}); records must be Alpaca-format")
    examples, truncated, dropped = [], 0, 0
    for r in records:
        ids, labels, cut = tokenize_instruction(tokenizer, _text(r, d.instruction_column), _text(r, d.input_column),
                                                _text(r, d.output_column), d.max_length)
        truncated += cut
        if all(l == IGNORE_INDEX for l in labels[1:]):  # position 0 is never a target (shift)
            dropped += 1
            continue
        examples.append((np.asarray(ids, dtype=np.int64), np.asarray(labels, dtype=np.int64)))
        if max_examples is not None and len(examples) >= max_examples:
            break
    if dropped:
        log.warning("%s: %d of %d instruction examples dropped: their response was entirely cut by max_length=%d",
                    where, dropped, dropped + len(examples), d.max_length)
    return examples, {"examples": len(examples), "truncated": truncated, "dropped_response_cut": dropped}


# ----------------------------------------------------------------------------------------------
# the in-memory dataset + cache

@dataclass
class TokenizedSplit:
    input_ids: list[np.ndarray]
    labels: list[np.ndarray]
    stats: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)

    def save(self, path: Path) -> None:
        lengths = np.asarray([len(x) for x in self.input_ids], dtype=np.int64)
        flat_ids = np.concatenate(self.input_ids) if self.input_ids else np.zeros(0, np.int64)
        flat_labels = np.concatenate(self.labels) if self.labels else np.zeros(0, np.int64)
        with atomic_open(path, "wb") as f:
            np.savez(f, lengths=lengths, ids=flat_ids, labels=flat_labels, stats=np.frombuffer(json.dumps(self.stats).encode(), np.uint8))

    @classmethod
    def load(cls, path: Path) -> "TokenizedSplit":
        with np.load(path, allow_pickle=False) as z:
            offsets = np.concatenate([[0], np.cumsum(z["lengths"])])
            ids, labels = z["ids"], z["labels"]
            stats = json.loads(z["stats"].tobytes().decode())
            return cls([ids[a:b] for a, b in zip(offsets[:-1], offsets[1:])],
                       [labels[a:b] for a, b in zip(offsets[:-1], offsets[1:])], stats)


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        body = backend.to_str()
    else:
        body = json.dumps(sorted(tokenizer.get_vocab().items()))
    # The chat template too: conversations are rendered with it, so another template is other data.
    body += json.dumps([tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, type(tokenizer).__name__,
                        getattr(tokenizer, "chat_template", None)])
    return hashlib.sha256(body.encode()).hexdigest()


def build_splits(raw: RawSplits, tokenizer, cfg) -> tuple[TokenizedSplit, TokenizedSplit]:
    d = cfg.data
    if d.format == "text":
        group = d.packing_group_size if d.packing == "group_texts" else None
        blocks, stats = pack_texts(texts_of(raw.train, d.text_column, "training data"), tokenizer, d.block_size, d.add_eos,
                                   d.skip_empty, d.max_train_samples, group)
        train = TokenizedSplit(list(blocks), list(blocks), stats)
        vblocks, vstats = (np.zeros((0, d.block_size), np.int64), {})
        if raw.validation:
            vblocks, vstats = pack_texts(texts_of(raw.validation, d.text_column, "validation data"), tokenizer, d.block_size,
                                         d.add_eos, d.skip_empty, d.max_eval_samples, group)
        val = TokenizedSplit(list(vblocks), list(vblocks), vstats)
    else:
        tokenize = chat.tokenize_conversations if d.format == "chat" else tokenize_instructions
        ex, stats = tokenize(raw.train, tokenizer, d, d.max_train_samples, "training data")
        train = TokenizedSplit([e[0] for e in ex], [e[1] for e in ex], stats)
        vex, vstats = tokenize(raw.validation, tokenizer, d, d.max_eval_samples, "validation data")
        val = TokenizedSplit([e[0] for e in vex], [e[1] for e in vex], vstats)
    if len(train) == 0:
        what = f"a single block of data.block_size={d.block_size} tokens" if d.format == "text" else "one usable example"
        why = _all_cut_by_max_length(raw.train, tokenizer, d) if train.stats.get("dropped_response_cut") else ""
        raise EmotuneError(f"{raw.source}: the training data gives not even {what}{why}")
    return train, val


def _all_cut_by_max_length(records: list[dict], tokenizer, d) -> str:
    """Why no example is left when max_length cut every response away: the shortest example and prompt (the first
    target's position) untruncated, so the message says which max_length would keep one. Only on this error."""
    lengths = []
    for n, r in enumerate(records, 1):
        if d.format == "chat":
            ids, labels, _ = chat.tokenize_conversation(tokenizer, chat.conversation_of(r, d, f"record {n}"), 1 << 62)
        else:
            ids, labels, _ = tokenize_instruction(tokenizer, _text(r, d.instruction_column), _text(r, d.input_column),
                                                  _text(r, d.output_column), 1 << 62)
        first = next((i for i, label in enumerate(labels) if i > 0 and label != IGNORE_INDEX), len(ids))
        lengths.append((len(ids), first))
    shortest, prompt = min(n for n, _ in lengths), min(f for _, f in lengths)
    return (f": data.max_length={d.max_length} cuts away the response of every one of its {len(records)} examples "
            f"(the shortest is {shortest} tokens; the shortest prompt before a response token is {prompt}, so "
            f"data.max_length must be at least {prompt + 1} to keep one)")


def load_datasets(cfg, tokenizer, rank: int = 0, barrier: Callable[[], None] = lambda: None) -> tuple[TokenizedSplit, TokenizedSplit]:
    """Tokenised train / validation splits, computed once by rank 0 and cached; the others load the cache."""
    d = cfg.data
    settings = d.model_dump(mode="json", exclude={"cache_dir"})
    cache_dir = Path(d.cache_dir or Path(cfg.output_dir) / "data-cache")

    def key_for(fp: str) -> str:
        key = json.dumps([fp, tokenizer_fingerprint(tokenizer), settings, cfg.seed], sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()[:20]

    def compute_or_load() -> tuple[TokenizedSplit, TokenizedSplit]:
        # Local files are fingerprinted by content, cheaply, before reading them all.
        fp = _fingerprint_files(d.train_files + (d.validation_files or [])) if d.train_files else None
        if fp is not None:
            paths = [cache_dir / f"{key_for(fp)}-{s}.npz" for s in ("train", "validation")]
            if all(p.is_file() for p in paths):
                return TokenizedSplit.load(paths[0]), TokenizedSplit.load(paths[1])
        raw = read_records(cfg)
        paths = [cache_dir / f"{key_for(raw.fingerprint)}-{s}.npz" for s in ("train", "validation")]
        if all(p.is_file() for p in paths):
            return TokenizedSplit.load(paths[0]), TokenizedSplit.load(paths[1])
        train, val = build_splits(raw, tokenizer, cfg)
        cache_dir.mkdir(parents=True, exist_ok=True)
        train.save(paths[0])
        val.save(paths[1])
        log.info("tokenised data cached in %s: train %s, validation %s", cache_dir, train.stats, val.stats)
        return train, val

    if rank == 0:
        try:
            result = compute_or_load()
        finally:
            barrier()  # release the other ranks even when rank 0 fails
        return result
    barrier()
    return compute_or_load()  # finds rank 0's cache
