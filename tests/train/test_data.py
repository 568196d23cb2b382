"""Data: packing, Alpaca formatting with the prompt masked, truncation / drop counting, readers, cache, batch order."""

import json
import logging
from collections import Counter

import numpy as np
import pytest
import torch
from train_builders import alpaca_rows, write_corpus

from emotune.errors import EmotuneError
from emotune.train import batches as B
from emotune.train import data as D
from emotune.train.chat import tokenize_conversation as chat_tokenize
from emotune.train.config import validate


@pytest.fixture(scope="module")
def tok(tiny_cache):
    return tiny_cache.load_tokenizer("train")


def cfg_for(tmp_path, **data):
    base = {"output_dir": str(tmp_path / "out"), "model": {"name_or_path": "m"}, "seed": 3,
            "data": {"train_files": [str(tmp_path / "train.txt")], **data}}
    return validate(base)


def test_pack_texts_concatenates_and_drops_remainder(tok):
    texts = ["the river town .", "", "old bridge built .", "   ", "north harbour ."]
    blocks, stats = D.pack_texts(texts, tok, block_size=4, add_eos=True)
    ids = []
    for t in texts:
        if t.strip():
            ids += tok(t)["input_ids"] + [tok.eos_token_id]
    n = len(ids) // 4
    assert blocks.shape == (n, 4) and blocks.flatten().tolist() == ids[: n * 4]
    assert stats["documents"] == 3 and stats["dropped_tail_tokens"] == len(ids) - 4 * n
    assert ids[0] == tok.bos_token_id  # the tokenizer's own special tokens are kept
    limited, _ = D.pack_texts(texts * 50, tok, block_size=4, max_blocks=3)
    assert limited.shape == (3, 4)


def test_alpaca_prompts_match_the_official_template():
    assert D.alpaca_prompt("Add.", "") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd.\n\n### Response:\n")
    assert D.alpaca_prompt("Add.", "1 2").endswith("### Instruction:\nAdd.\n\n### Input:\n1 2\n\n### Response:\n")
    assert "paired with an input" in D.alpaca_prompt("Add.", "1 2")


@pytest.mark.parametrize("input_", ["", "numbers 3 4"])
def test_instruction_masking_only_response_and_eos(tok, input_):
    ids, labels, cut = D.tokenize_instruction(tok, "What is 3 plus 4?", input_, "3 plus 4 is 7 .", max_length=512)
    prompt = D.alpaca_prompt("What is 3 plus 4?", input_)
    n_prompt = len(tok(prompt)["input_ids"])
    assert not cut and len(ids) == len(labels)
    assert all(l == -100 for l in labels[:n_prompt])
    targets = [l for l in labels if l != -100]
    assert targets[-1] == tok.eos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(targets[:-1]) == "3 plus 4 is 7 ."
    assert tok.decode(ids[:n_prompt], skip_special_tokens=True) == prompt
    assert labels[n_prompt:] == ids[n_prompt:]


def test_truncation_and_dropped_examples_counted(tok, tmp_path, caplog):
    limit = len(tok(D.alpaca_prompt("Long answer?", ""))["input_ids"]) + 8
    cfg = cfg_for(tmp_path, format="instruction", max_length=limit)
    rows = [{"instruction": "Short?", "input": "", "output": "yes ."},
            {"instruction": "word " * 80, "input": "", "output": "never seen ."},          # response entirely cut
            {"instruction": "Long answer?", "input": "", "output": "river " * 100}]        # truncated, kept
    with caplog.at_level(logging.WARNING, logger="emotune.data"):
        examples, stats = D.tokenize_instructions(rows, tok, cfg.data)
    assert stats == {"examples": 2, "truncated": 2, "dropped_response_cut": 1}
    assert all(len(ids) <= limit for ids, _ in examples)
    assert sum(l != -100 for l in examples[1][1]) == 8  # the kept, truncated response
    assert "1 of 3 instruction examples dropped" in caplog.text


def test_local_readers_and_bad_lines(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n\n{"text": "two"}\n')
    assert [r["text"] for r in D._read_local(str(tmp_path / "a.jsonl"))] == ["one", "two"]
    (tmp_path / "b.json").write_text(json.dumps([{"text": "x"}]))
    assert D._read_local(str(tmp_path / "b.json")) == [{"text": "x"}]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["p1", "p2"]}), tmp_path / "c.parquet")
    assert [r["text"] for r in D._read_local(str(tmp_path / "c.parquet"))] == ["p1", "p2"]
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(EmotuneError, match=r"bad.jsonl: line 2: invalid JSON"):
        D._read_local(str(tmp_path / "bad.jsonl"))
    with pytest.raises(EmotuneError, match="unsupported type '.csv'"):
        (tmp_path / "d.csv").write_text("x")
        D._read_local(str(tmp_path / "d.csv"))
    with pytest.raises(EmotuneError, match="no column 'body'"):
        D.texts_of([{"text": "a"}], "body", "training data")


@pytest.mark.parametrize("fmt", ["instruction", "chat"])
def test_every_example_cut_away_says_which_max_length_and_the_shortest(tok, tmp_path, fmt):
    """Not only "not even one usable example": the max_length that drops them and what would keep one."""
    rows = alpaca_rows(4)
    if fmt == "chat":
        rows = [{"messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]}
                for r in rows]
    template = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    cfg = cfg_for(tmp_path, format=fmt, max_length=8, **({"chat_template": template} if fmt == "chat" else {}))
    if fmt == "chat":
        tok.chat_template = template
    lengths, firsts = [], []
    for r in rows:
        if fmt == "chat":
            ids, labels, _ = chat_tokenize(tok, r["messages"], 10**6)
        else:
            ids, labels, _ = D.tokenize_instruction(tok, r["instruction"], r["input"], r["output"], 10**6)
        lengths.append(len(ids))
        firsts.append(next(i for i, label in enumerate(labels) if label != -100))
    assert min(firsts) >= 8  # every response starts past max_length
    raw = D.RawSplits(rows, [], "fp", "train.jsonl")
    with pytest.raises(EmotuneError) as err:
        D.build_splits(raw, tok, cfg)
    msg = str(err.value)
    assert msg.startswith("train.jsonl: the training data gives not even one usable example: data.max_length=8 cuts "
                          "away the response of every one of its 4 examples"), msg
    assert f"the shortest is {min(lengths)} tokens" in msg and f"must be at least {min(firsts) + 1} to keep one" in msg
    cfg = cfg_for(tmp_path, format=fmt, max_length=min(firsts) + 1, **({"chat_template": template} if fmt == "chat" else {}))
    train, _ = D.build_splits(raw, tok, cfg)  # the advice holds: the examples with the shortest prompt are kept
    assert len(train) == firsts.count(min(firsts))
    tok.chat_template = None


def test_validation_split_percentage_is_seeded(tmp_path):
    write_corpus(tmp_path / "train.txt", 50)
    cfg = cfg_for(tmp_path, validation_split_percentage=10)
    a, b = D.read_records(cfg), D.read_records(cfg)
    assert len(a.validation) == 5 and len(a.train) == 45 and a.validation == b.validation
    # a partition of the file's lines: every line in exactly one split (as a multiset: a line may repeat)
    lines = (tmp_path / "train.txt").read_text().splitlines()
    assert Counter(r["text"] for r in a.validation) + Counter(r["text"] for r in a.train) == Counter(lines)
    assert len(set(lines)) == 50 and not {r["text"] for r in a.validation} & {r["text"] for r in a.train}
    other = D.read_records(cfg.model_copy(update={"seed": 4}))
    assert other.validation != a.validation


def test_cache_written_once_and_reused(tok, tmp_path):
    write_corpus(tmp_path / "train.txt", 60)
    cfg = cfg_for(tmp_path, block_size=16)
    calls = []
    train, val = D.load_datasets(cfg, tok, rank=0, barrier=lambda: calls.append("barrier"))
    assert calls == ["barrier"] and len(train) > 0 and len(val) == 0
    files = sorted((tmp_path / "out" / "data-cache").glob("*.npz"))
    assert len(files) == 2
    # another rank (or a rerun) loads the cache: same arrays, no re-tokenisation
    stamp = [f.stat().st_mtime_ns for f in files]
    train2, _ = D.load_datasets(cfg, tok, rank=1, barrier=lambda: None)
    assert [f.stat().st_mtime_ns for f in files] == stamp
    assert all(np.array_equal(a, b) for a, b in zip(train.input_ids, train2.input_ids))
    # different settings -> a different cache entry
    D.load_datasets(cfg_for(tmp_path, block_size=8), tok)
    assert len(list((tmp_path / "out" / "data-cache").glob("*.npz"))) == 4


def test_instruction_splits_from_jsonl(tok, tmp_path):
    path = tmp_path / "alpaca.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in alpaca_rows(20)))
    cfg = validate({"output_dir": str(tmp_path / "o"), "model": {"name_or_path": "m"},
                    "data": {"format": "instruction", "train_files": [str(path)], "validation_split_percentage": 10}})
    train, val = D.load_datasets(cfg, tok)
    assert len(train) == 18 and len(val) == 2
    assert all((lab[: 10] == -100).all() for lab in train.labels)


def test_collate_pads_right_with_ignored_labels():
    batch = B.collate([(np.array([5, 6, 7]), np.array([-100, 6, 7])), (np.array([8]), np.array([8]))], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def _split(n, width=4):
    rows = [np.arange(i * width, (i + 1) * width) for i in range(n)]
    return D.TokenizedSplit(rows, rows)


def test_step_batches_deterministic_and_world_size_invariant():
    split = _split(40)
    one = B.StepBatches(split, micro=2, world=1, accum=4, seed=1, pad_id=0)
    two = B.StepBatches(split, micro=2, world=2, accum=2, seed=1, pad_id=0)
    four = B.StepBatches(split, micro=2, world=4, accum=1, seed=1, pad_id=0)
    assert one.steps_per_epoch == two.steps_per_epoch == 5
    for step in range(12):  # crosses an epoch boundary
        rows = lambda sb: sorted(tuple(r) for rank in range(sb.world) for b in sb.micro_batches(step, rank)
                                 for r in b["input_ids"].tolist())
        assert rows(one) == rows(two) == rows(four)
    again = B.StepBatches(split, micro=2, world=2, accum=2, seed=1, pad_id=0)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(two.micro_batches(7, 1), again.micro_batches(7, 1)))
    # an epoch covers every example at most once; epochs are shuffled differently
    seen = [r for s in range(5) for rank in range(2) for b in two.micro_batches(s, rank) for r in b["input_ids"][:, 0].tolist()]
    assert len(seen) == len(set(seen)) == 40
    assert not torch.equal(two.permutation(0), two.permutation(1))
    assert not torch.equal(B.StepBatches(split, 2, 2, 2, seed=2, pad_id=0).permutation(0), two.permutation(0))


def test_too_little_data_is_a_clear_error():
    with pytest.raises(EmotuneError, match="fewer than one global batch of 16"):
        B.StepBatches(_split(10), micro=4, world=2, accum=2, seed=0, pad_id=0)


def test_eval_batches_equal_count_on_every_rank():
    split = _split(5)
    per_rank = [B.eval_batches(split, 2, world=2, rank=r, pad_id=0) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == 2
    real = [row for batches in per_rank for b in batches for row, lab in zip(b["input_ids"].tolist(), b["labels"].tolist())
            if any(l != -100 for l in lab)]
    assert sorted(r[0] for r in real) == [0, 4, 8, 12, 16]


def test_hub_loader_path_on_a_local_dataset_directory(tok, tmp_path):
    """The `dataset_name` path (datasets.load_dataset) run offline on a dataset directory with split files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ds_dir = tmp_path / "wikitext-like"
    (ds_dir / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": [" = Title = ", ""] + [f" line {i} of the river text ." for i in range(60)]}),
                   ds_dir / "data" / "train-00000.parquet")
    pq.write_table(pa.table({"text": [f" valid {i} north harbour ." for i in range(20)]}), ds_dir / "data" / "validation-00000.parquet")
    cfg = validate({"output_dir": str(tmp_path / "o"), "model": {"name_or_path": "m"},
                    "data": {"dataset_name": str(ds_dir), "block_size": 16}})
    raw = D.read_records(cfg)
    assert len(raw.train) == 62 and len(raw.validation) == 20
    train, val = D.load_datasets(cfg, tok)
    assert len(train) > 0 and len(val) > 0 and train.input_ids[0].shape == (16,)
    with pytest.raises(EmotuneError, match="dataset 'no/such-dataset'"):
        D.read_records(validate({"output_dir": "o", "model": {"name_or_path": "m"}, "data": {"dataset_name": "no/such-dataset"}}))


def test_dotted_columns_reach_into_a_nested_struct(tok, tmp_path):
    """Hub sets that nest their Alpaca columns in one struct (`{"data": {"instruction", "input", "output"}}`)."""
    rows = alpaca_rows(6)
    nested = tmp_path / "nested.jsonl"
    nested.write_text("\n".join(json.dumps({"data": r}) for r in rows))
    flat = tmp_path / "flat.jsonl"
    flat.write_text("\n".join(json.dumps(r) for r in rows))
    keys = {"instruction_column": "data.instruction", "input_column": "data.input", "output_column": "data.output"}
    base = {"output_dir": str(tmp_path / "o"), "model": {"name_or_path": "m"}}
    cfg = validate({**base, "data": {"format": "instruction", "train_files": [str(nested)], **keys}})
    D.check_local_files(cfg)
    a, _ = D.load_datasets(cfg, tok)
    b, _ = D.load_datasets(validate({**base, "data": {"format": "instruction", "train_files": [str(flat)]}}), tok)
    assert [x.tolist() for x in a.labels] == [x.tolist() for x in b.labels]
    assert [x.tolist() for x in a.input_ids] == [x.tolist() for x in b.input_ids]
    nested.write_text("\n".join([json.dumps({"data": rows[0]}), json.dumps({"data": {"instruction": "x"}})]))
    with pytest.raises(EmotuneError, match=r"nested.jsonl: line 2: no 'data.output' field"):
        D.check_local_files(cfg)


def test_recycled_wiz70_config_reads_the_published_layout(tok, tmp_path):
    """The shipped recycled_wiz70_v1 configs on a local dataset directory laid out as the hub set is (one parquet
    file, one struct column `data` of instruction / input / output): the same examples as flat Alpaca rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from emotune.resources import shipped

    rows = alpaca_rows(30)
    (tmp_path / "wiz" / "data").mkdir(parents=True)
    pq.write_table(pa.table({"data": rows}), tmp_path / "wiz" / "data" / "train-00000-of-00001.parquet")
    cfg = yaml.safe_load(shipped("train/llama7b-recycled-wiz70-emo.yaml").read_text())
    cfg["data"].update(dataset_name=str(tmp_path / "wiz"))
    cfg["output_dir"] = str(tmp_path / "o")
    train, val = D.load_datasets(validate(cfg), tok)
    assert len(train) + len(val) == 30
    flat = [D.tokenize_instruction(tok, r["instruction"], r["input"], r["output"], 512)[1] for r in rows]
    assert sorted(x.tolist() for x in train.labels + val.labels) == sorted(flat)
