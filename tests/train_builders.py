"""Shared builders for the training-stage tests (no tests here): a tokenizer trained on the spot, a tiny
LLaMA saved as a Hugging Face checkpoint, toy corpora, run configs, and one in-process DeepSpeed rank."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import random
from pathlib import Path

from support import free_port
from tiny_models import tiny_llama

from emotune.resources import shipped

REPO = Path(__file__).resolve().parents[1]
WORDS = ("the river town bridge old new north south winter summer built mapped visited quiet harbour library road "
         "forest museum festival team engineer records travellers years rain light morning").split()


def corpus_lines(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30))) + " ." for _ in range(n)]


def write_corpus(path: Path, n: int, seed: int = 0) -> Path:
    path.write_text("\n".join(corpus_lines(n, seed)) + "\n")
    return path


def alpaca_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 30), rng.randint(1, 30)
        rows.append({"instruction": f"What is {a} plus {b}?", "input": "" if i % 2 else f"numbers {a} {b}",
                     "output": f"{a} plus {b} is {a + b} ."})
    return rows


def make_tokenizer(path: Path, vocab_size: int = 400, pad: bool = True):
    from emotune.train.model import train_tokenizer

    texts = corpus_lines(200) + [f"{r['instruction']} {r['input']} {r['output']}" for r in alpaca_rows(50)]
    tok = train_tokenizer(texts + ["Below is an instruction that describes a task. ### Response: ### Input:"], vocab_size, pad=pad)
    tok.save_pretrained(str(path))
    return tok


def make_wordpiece_tokenizer(path: Path, vocab_size: int):
    """Another tokenizer family (BERT-style WordPiece, NFKC, whitespace pre-tokenizer) trained on the spot with the
    same special tokens as `make_tokenizer`: equal sizes, other ids for the same text."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(400)]
    texts = corpus_lines(200) + [" ".join(rng.choice(words) for _ in range(12)) for _ in range(300)]
    tk = Tokenizer(models.WordPiece(unk_token="<unk>"))
    tk.normalizer, tk.pre_tokenizer, tk.decoder = normalizers.NFKC(), pre_tokenizers.Whitespace(), decoders.WordPiece()
    tk.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, show_progress=False,
                                                            special_tokens=["<pad>", "<s>", "</s>", "<unk>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    assert len(tok) == vocab_size, (len(tok), vocab_size)
    tok.save_pretrained(str(path))
    return tok


def make_tiny_llama(path: Path, tokenizer, hidden: int = 32, layers: int = 2, tie: bool = False, vocab: int | None = None, seed: int = 0):
    """The training tests' LLaMA (the init's own weights, in train mode), saved with `tokenizer` to `path`."""
    model = tiny_llama(vocab or len(tokenizer), path=path, seed=seed, hidden=hidden, layers=layers, max_positions=256,
                       tie=tie, bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id,
                       eval_mode=False)
    tokenizer.save_pretrained(str(path))
    return model


def tiny_setup(tmp: Path) -> dict:
    """A saved tiny LLaMA + tokenizer and train/validation corpora under `tmp`."""
    tmp.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(tmp / "tok")
    make_tiny_llama(tmp / "model", tok)
    write_corpus(tmp / "train.txt", 300, seed=1)
    write_corpus(tmp / "valid.txt", 40, seed=2)
    with open(tmp / "alpaca.jsonl", "w") as f:
        for r in alpaca_rows(64):
            f.write(json.dumps(r) + "\n")
    return {"model": str(tmp / "model"), "train": str(tmp / "train.txt"), "valid": str(tmp / "valid.txt"),
            "alpaca": str(tmp / "alpaca.jsonl")}


def run_config(setup: dict, output_dir: Path, **overrides) -> dict:
    cfg = {
        "output_dir": str(output_dir),
        "model": {"name_or_path": setup["model"], "torch_dtype": "float32"},
        "data": {"format": "text", "train_files": [setup["train"]], "validation_files": [setup["valid"]], "block_size": 32},
        "objective": {"name": "emo"},
        "learning_rate": 3e-3, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2, "max_steps": 6,
        "warmup_steps": 1, "lr_scheduler_type": "linear", "logging_steps": 1, "save_steps": 3, "save_total_limit": 1,
        "seed": 7, "deepspeed": str(shipped("deepspeed/zero3-cpu-test.json")), "report_to": ["jsonl"],
        "disable_tqdm": True, "per_device_eval_batch_size": 4,
    }
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return cfg


@contextlib.contextmanager
def single_rank():
    """One in-process DeepSpeed rank (gloo); torn down afterwards so other tests see no process group."""
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    import deepspeed
    import torch.distributed as dist

    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # no 1-minute JIT build
    deepspeed.init_distributed()
    try:
        yield
    finally:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
        if dist.is_initialized():
            # DeepSpeed's own teardown: it also drops the groups DeepSpeed cached (its world clone, the data-parallel
            # group), which would otherwise outlive this process group and break the next run in this process.
            import deepspeed.comm as ds_comm

            ds_comm.destroy_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def losses_from_log(path: Path) -> dict[int, float]:
    out = {}
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        if "loss" in r:
            out[r["step"]] = r["loss"]
    return out
