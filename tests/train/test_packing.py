"""Raw-text packing as HF run_clm's `group_texts` (the EMO paper's code): checked against `datasets.map` running
a reimplementation of its semantics, the way run_clm runs it; the `stream` option; the shipped demo configs."""

from __future__ import annotations

from itertools import chain
from pathlib import Path

import numpy as np
import pytest
import yaml
from train_builders import corpus_lines

from emotune.train import data as D
from emotune.train.config import validate

CONFIGS = Path(__file__).resolve().parents[2] / "emotune" / "configs" / "train"


@pytest.fixture(scope="module")
def tok(tiny_cache):
    return tiny_cache.load_tokenizer("train")


def run_clm_blocks(texts: list[str], tok, block_size: int, batch_size: int = 1000) -> list[list[int]]:
    """run_clm's two `datasets.map(batched=True)` passes: `tokenizer(text)` per row, then per batch of rows
    concatenate, keep `(total // block_size) * block_size` tokens, cut into blocks."""
    from datasets import Dataset

    def group(batch):
        joined = {k: list(chain(*batch[k])) for k in batch}
        total = len(joined["input_ids"]) // block_size * block_size
        return {k: [v[i : i + block_size] for i in range(0, total, block_size)] for k, v in joined.items()}

    ds = Dataset.from_dict({"text": texts})
    ds = ds.map(lambda b: tok(b["text"]), batched=True, batch_size=batch_size, remove_columns=["text"])
    ds = ds.map(group, batched=True, batch_size=batch_size)
    return ds["input_ids"]


def test_group_texts_equals_run_clm(tok):
    texts = corpus_lines(2300, seed=5)
    texts[3] = ""  # run_clm keeps an empty row: its special tokens (BOS) go into the stream
    blocks, stats = D.pack_texts(texts, tok, block_size=16, skip_empty=False, group_size=1000)
    want = run_clm_blocks(texts, tok, 16)
    assert blocks.tolist() == want
    assert stats["documents"] == 2300 and stats["blocks"] == len(want)
    assert tok(texts[0])["input_ids"][0] == tok.bos_token_id and tok.eos_token_id not in blocks  # no EOS appended
    # smaller groups drop more: every group's remainder
    small, _ = D.pack_texts(texts[:50], tok, block_size=16, skip_empty=False, group_size=7)
    assert small.tolist() == run_clm_blocks(texts[:50], tok, 16, batch_size=7)


def test_stream_packing_drops_only_the_last_remainder(tok):
    texts = corpus_lines(40, seed=6)
    blocks, stats = D.pack_texts(texts, tok, block_size=16, add_eos=True)
    ids = [t for x in texts for t in tok(x)["input_ids"] + [tok.eos_token_id]]
    n = len(ids) // 16
    assert blocks.flatten().tolist() == ids[: n * 16] and stats["dropped_tail_tokens"] == len(ids) - n * 16
    grouped, _ = D.pack_texts(texts, tok, block_size=16, add_eos=True, group_size=10)
    assert len(grouped) <= len(blocks)
    limited, _ = D.pack_texts(texts * 30, tok, block_size=16, group_size=1000, max_blocks=3)
    assert limited.shape == (3, 16)


def test_config_default_is_group_texts_and_build_splits_uses_it(tok, tmp_path):
    train = tmp_path / "train.txt"
    lines = corpus_lines(30, seed=7)
    train.write_text("\n".join(lines) + "\n")
    cfg = validate({"output_dir": str(tmp_path / "out"), "model": {"name_or_path": "m"},
                    "data": {"train_files": [str(train)], "block_size": 8, "packing_group_size": 4}})
    d = cfg.data
    assert (d.packing, d.add_eos, d.skip_empty) == ("group_texts", False, False)
    raw = D.read_records(cfg)
    train_split, _ = D.build_splits(raw, tok, cfg)
    texts = D.texts_of(raw.train, "text", "training data")
    assert np.stack(train_split.input_ids).tolist() == run_clm_blocks(texts, tok, 8, batch_size=4)
    stream = validate({**cfg.model_dump(mode="json"), "data": {**d.model_dump(mode="json"), "packing": "stream"}})
    blocks, _ = D.pack_texts(texts, tok, 8, group_size=None)
    assert np.stack(D.build_splits(raw, tok, stream)[0].input_ids).tolist() == blocks.tolist()


@pytest.mark.parametrize("name", ["demo-pretrain.yaml", "demo-finetune.yaml"])
def test_demo_configs_state_their_packing(name):
    text = (CONFIGS / name).read_text()
    data = yaml.safe_load(text)["data"]
    assert data["packing"] == "group_texts" and data["add_eos"] is True  # stated, not left to the defaults
    assert "END" in text  # ... with the reason: the language's end of text is an event to learn
