"""Training data: raw text packed into blocks, or Alpaca-format instructions with the prompt masked.

Raw text (continual fine-tuning, language modelling): every document (a line of a .txt file, the text
column of a .jsonl/.parquet file or hub dataset) is tokenised with the tokenizer's special tokens,
optionally followed by EOS, all documents are concatenated and cut into `block_size` blocks; the
remainder is dropped (as HF `run_clm.py` does). Labels are the input ids (the loss shifts them).

Instructions (Alpaca format: instruction / input / output): prompt = the Alpaca template, target =
output + EOS. Prompt tokens get label -100, so only response tokens (+EOS) are targets. Examples longer
than `max_length` are truncated; those whose response is cut away entirely are counted and dropped.

Tokenisation is done once, by rank 0 first, and cached as a .npz keyed by the data, the tokenizer and
the settings; other ranks (and later runs) load the cache. The batches of a split are in batches.py.
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
from emotune.errors import EmotuneError, one_line
from emotune.objectives.common import IGNORE_INDEX

log = logging.getLogger("emotune.data")

PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
TEXT_SUFFIXES = (".txt", ".text", ".raw")
JSON_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)


def alpaca_prompt(instruction: str, input_: str | None) -> str:
    if input_ and input_.strip():
        return PROMPT_INPUT.format(instruction=instruction, input=input_)
    return PROMPT_NO_INPUT.format(instruction=instruction)


# ----------------------------------------------------------------------------------------------
# reading records

def _decode(p: Path) -> str:
    """The file as UTF-8 text; binary content is one error naming the file and line."""
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise EmotuneError(f"{p}: line {line}: not UTF-8 text (byte {data[err.start]:#04x}; a binary file?)") from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise EmotuneError(f"{p}: line {line}: contains NUL bytes (a binary file?)")
    return text


def _read_local(path: str, d=None) -> list[dict]:
    """Records of one local file, each checked (`d`: the DataConfig whose columns every record must have)."""
    p = Path(path)
    if not p.is_file():
        raise EmotuneError(f"data file {path} not found")
    suffix = p.suffix.lower()
    column = d.text_column if d is not None else "text"
    if suffix in TEXT_SUFFIXES:
        if d is not None and d.format == "instruction":
            raise EmotuneError(f"{path}: instruction data must be .jsonl, .json or .parquet records, not plain text")
        return [{column: line} for line in _decode(p).splitlines()]
    if suffix in JSON_SUFFIXES:
        text = _decode(p)
        if suffix == ".json" and text.lstrip().startswith("["):
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as err:
                raise EmotuneError(f"{path}: line {err.lineno}: invalid JSON: {err.msg}") from None
            where = [f"{path}: record {n}" for n in range(1, len(rows) + 1)]
        else:
            rows, where = [], []
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise EmotuneError(f"{path}: line {n}: invalid JSON: {err.msg}") from None
                    where.append(f"{path}: line {n}")
        for row, at in zip(rows, where):
            if not isinstance(row, dict):
                raise EmotuneError(f"{at}: not a JSON object")
            if d is not None:
                check_record(row, d, at)
        return rows
    if suffix in PARQUET_SUFFIXES:
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(p).to_pylist()
        except Exception as err:
            raise EmotuneError(f"{path}: not a readable parquet file: {one_line(err)}") from None
        if d is not None:
            for n, row in enumerate(rows, 1):
                check_record(row, d, f"{path}: row {n}")
        return rows
    raise EmotuneError(f"data file {path}: unsupported type {suffix!r} (use .txt, .jsonl, .json or .parquet)")


def check_local_files(cfg) -> None:
    """Read and check every record of the local data files (UTF-8, JSON, the fields the format needs),
    one file at a time, keeping nothing: bad data fails before any process group or model exists."""
    d = cfg.data
    if not d.train_files:
        return
    n_train = 0
    for f in d.train_files + (d.validation_files or []):
        p = Path(f)
        if p.suffix.lower() in TEXT_SUFFIXES and d.format == "text":
            n = len(_decode(p).splitlines()) if p.is_file() else 0  # plain text: every line is a record
        else:
            n = len(_read_local(f, d))
        n_train += n if f in d.train_files else 0
    if n_train == 0:
        raise EmotuneError(f"data.train_files ({', '.join(d.train_files)}): the training data is empty (no records)")


def check_record(row: dict, d, where: str) -> None:
    """Every record (not only the first) has the fields its format needs, as strings: a record without
    its text or response would otherwise train as an empty document, silently."""
    if d.format == "text":
        needed, optional = (d.text_column,), ()
    else:
        needed, optional = (d.instruction_column, d.output_column), (d.input_column,)
    for col in needed:
        if col not in row:
            key = "data.text_column" if d.format == "text" else "data.instruction_column / data.output_column"
            raise EmotuneError(f"{where}: no {col!r} field (fields: {sorted(row)}); check the file or {key}")
        if not isinstance(row[col], str):
            raise EmotuneError(f"{where}: field {col!r} must be a string, got {type(row[col]).__name__}")
    for col in optional:
        if row.get(col) is not None and not isinstance(row[col], str):
            raise EmotuneError(f"{where}: field {col!r} must be a string, got {type(row[col]).__name__}")


def _read_hub(name: str, config: str | None, split: str, d=None) -> list[dict]:
    import datasets

    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as err:
        raise EmotuneError(f"dataset {name!r} (config {config!r}, split {split!r}) could not be loaded: {one_line(err)}") from None
    rows = ds.to_list()
    if d is not None:
        for n, row in enumerate(rows, 1):
            check_record(row, d, f"dataset {name!r} split {split!r}: row {n}")
    return rows


def _fingerprint_files(files: list[str]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


@dataclass
class RawSplits:
    train: list[dict]
    validation: list[dict]
    fingerprint: str  # identifies the records (file contents or hub id)
    source: str = "the training data"  # named in messages: the files or the hub dataset


def read_records(cfg) -> RawSplits:
    """Train and validation records from local files or a hub dataset (`cfg` is a DataConfig + seed)."""
    d = cfg.data
    if d.train_files:
        for f in d.train_files + (d.validation_files or []):
            if not Path(f).is_file():
                raise EmotuneError(f"data.train_files / validation_files: data file {f} not found")
        train = [r for f in d.train_files for r in _read_local(f, d)]
        val = [r for f in (d.validation_files or []) for r in _read_local(f, d)]
        fp = _fingerprint_files(d.train_files + (d.validation_files or []))
        source = f"data.train_files ({', '.join(d.train_files)})"
    else:
        train = _read_hub(d.dataset_name, d.dataset_config_name, d.train_split, d)
        source = f"data.dataset_name ({d.dataset_name!r}, split {d.train_split!r})"
        val = []
        if d.validation_split and d.validation_split_percentage == 0:
            try:
                val = _read_hub(d.dataset_name, d.dataset_config_name, d.validation_split)
            except EmotuneError:
                log.warning("dataset %s has no split %r: no validation", d.dataset_name, d.validation_split)
            for n, row in enumerate(val, 1):  # outside the try: a bad record is an error, not "no split"
                check_record(row, d, f"dataset {d.dataset_name!r} split {d.validation_split!r}: row {n}")
        fp = hashlib.sha256(f"{d.dataset_name}|{d.dataset_config_name}|{d.train_split}|{d.validation_split}".encode()).hexdigest()
    if not val and d.validation_split_percentage > 0:
        perm = np.random.default_rng(cfg.seed).permutation(len(train))
        n_val = max(1, int(len(train) * d.validation_split_percentage / 100))
        val = [train[i] for i in sorted(perm[:n_val])]
        train = [train[i] for i in sorted(perm[n_val:])]
    if not train:
        raise EmotuneError(f"{source}: the training data is empty (no records)")
    return RawSplits(train, val, fp, source)


def texts_of(records: list[dict], column: str, where: str = "data") -> list[str]:
    for n, r in enumerate(records, 1):  # every record: a missing text must not train as an empty document
        if column not in r:
            raise EmotuneError(f"{where}: record {n} has no column {column!r} (columns: {sorted(r)}); set data.text_column")
    return [str(r[column] if r[column] is not None else "") for r in records]


def tokenizer_training_texts(cfg) -> list[str]:
    """What a tokenizer trained on the spot (model.train_tokenizer_vocab_size) learns from: the training split."""
    d = cfg.data
    train = read_records(cfg).train
    if d.format == "text":
        return texts_of(train, d.text_column, "training data")
    return [" ".join(str(r.get(c) or "") for c in (d.instruction_column, d.input_column, d.output_column)) for r in train] + \
        [PROMPT_INPUT, PROMPT_NO_INPUT]


# ----------------------------------------------------------------------------------------------
# tokenisation

def _batched(items: list, n: int = 1000) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def pack_texts(texts: Iterable[str], tokenizer, block_size: int, add_eos: bool = False, skip_empty: bool = True,
               max_blocks: int | None = None) -> tuple[np.ndarray, dict]:
    """Tokenise documents, concatenate and cut into `[N, block_size]` blocks (remainder dropped)."""
    texts = [t for t in texts if not (skip_empty and not t.strip())]
    if add_eos and tokenizer.eos_token_id is None:
        raise EmotuneError("data.add_eos is set but the tokenizer has no EOS token")
    chunks: list[np.ndarray] = []  # numpy per batch of documents: WikiText-103 is ~120M tokens
    n_docs = n_tokens = 0
    for batch in _batched(texts):
        encoded = tokenizer(batch, add_special_tokens=True)["input_ids"]
        if add_eos:
            encoded = [ids + [tokenizer.eos_token_id] for ids in encoded]
        flat = np.fromiter((t for ids in encoded for t in ids), dtype=np.int64)
        chunks.append(flat)
        n_docs += len(encoded)
        n_tokens += len(flat)
        if max_blocks is not None and n_tokens >= max_blocks * block_size:
            break  # enough text tokenised for the requested number of blocks
    buf = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
    n_blocks = len(buf) // block_size
    if max_blocks is not None:
        n_blocks = min(n_blocks, max_blocks)
    blocks = buf[: n_blocks * block_size].reshape(n_blocks, block_size)
    return blocks, {"documents": n_docs, "tokens": n_tokens, "blocks": n_blocks, "dropped_tail_tokens": len(buf) - n_blocks * block_size}


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
            if col not in r:
                raise EmotuneError(f"{where}: record {n} has no column {col!r} (columns: {sorted(r)}); records must be Alpaca-format")
    examples, truncated, dropped = [], 0, 0
    for r in records:
        ids, labels, cut = tokenize_instruction(tokenizer, str(r.get(d.instruction_column) or ""), r.get(d.input_column),
                                                str(r.get(d.output_column) or ""), d.max_length)
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
    body += json.dumps([tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, type(tokenizer).__name__])
    return hashlib.sha256(body.encode()).hexdigest()


def build_splits(raw: RawSplits, tokenizer, cfg) -> tuple[TokenizedSplit, TokenizedSplit]:
    d = cfg.data
    if d.format == "text":
        blocks, stats = pack_texts(texts_of(raw.train, d.text_column, "training data"), tokenizer, d.block_size, d.add_eos,
                                   d.skip_empty, d.max_train_samples)
        train = TokenizedSplit(list(blocks), list(blocks), stats)
        vblocks, vstats = (np.zeros((0, d.block_size), np.int64), {})
        if raw.validation:
            vblocks, vstats = pack_texts(texts_of(raw.validation, d.text_column, "validation data"), tokenizer, d.block_size,
                                         d.add_eos, d.skip_empty, d.max_eval_samples)
        val = TokenizedSplit(list(vblocks), list(vblocks), vstats)
    else:
        ex, stats = tokenize_instructions(raw.train, tokenizer, d, d.max_train_samples, "training data")
        train = TokenizedSplit([e[0] for e in ex], [e[1] for e in ex], stats)
        vex, vstats = tokenize_instructions(raw.validation, tokenizer, d, d.max_eval_samples, "validation data")
        val = TokenizedSplit([e[0] for e in vex], [e[1] for e in vex], vstats)
    if len(train) == 0:
        what = f"a single block of data.block_size={d.block_size} tokens" if d.format == "text" else "one usable example"
        raise EmotuneError(f"{raw.source}: the training data gives not even {what}")
    return train, val


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
