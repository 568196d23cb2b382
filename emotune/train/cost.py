"""Read another checkpoint's LM head for the `external` cost embedding (docs/objectives.md, *Cost embedding*).

Only the one tensor is read, from the safetensors files (never a pickle, never the whole model): the
paper's LoRA runs took LLaMA-2-13B's head as the cost for every model size, which shares their tokenizer:
the source's tokenizer must be the student's (`check_cost_tokenizer`). Works on a local
directory or a hub id (only the index and the shard holding the head are downloaded).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from emotune.errors import EmotuneError, one_line
from emotune.hub import check_safetensors, hub_kwargs, resolve, safetensors_files
from emotune.objectives.cost import CostEmbedding
from emotune.train.same_tokenizer import check_same_tokenizer, load_checkpoint_tokenizer

# Where causal LMs keep the output embedding; tied models keep only the input one.
HEAD_KEYS = ("lm_head.weight", "embed_out.weight", "output.weight")
TIED_KEYS = ("model.embed_tokens.weight", "transformer.wte.weight", "model.decoder.embed_tokens.weight",
             "gpt_neox.embed_in.weight", "embed_tokens.weight", "wte.weight")


def _fetch(source: str, filename: str) -> Path | None:
    path = Path(source)
    if path.is_dir():
        return path / filename if (path / filename).is_file() else None
    if path.exists():
        raise EmotuneError(f"cost checkpoint {source}: expected a model directory, found a file")
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import EntryNotFoundError

        return Path(hf_hub_download(source, filename, **hub_kwargs(source, KEY, filename=filename)))
    except EntryNotFoundError:
        return None
    except EmotuneError:
        raise
    except Exception as err:  # offline, unknown repo, gated...
        raise EmotuneError(f"{KEY}: cost checkpoint {source!r} is neither a local directory nor reachable on the hub: "
                           f"{one_line(err)}") from None


KEY = "objective.cost_source"


def check_cost_source(source: str) -> None:
    """Cheap checks before training starts: the folder exists and its safetensors headers read (a hub id:
    reachable or cached)."""
    resolve(source, KEY)
    path = Path(source).expanduser()
    if path.is_dir():
        files = safetensors_files(path, KEY)
        if not files:
            raise EmotuneError(f"{KEY}: {source} holds no model.safetensors (only safetensors weights are read)")
        for file in files:
            check_safetensors(file)


def load_lm_head(source: str) -> torch.Tensor:
    """The `[V, H]` output embedding of the checkpoint at `source` (directory or hub id)."""
    check_cost_source(source)
    index_file = _fetch(source, "model.safetensors.index.json")
    if index_file is not None:
        try:
            weight_map = dict(json.loads(index_file.read_text())["weight_map"])
        except (ValueError, KeyError, TypeError) as err:
            raise EmotuneError(f"{index_file}: not a valid safetensors index ({one_line(err)})") from None
    else:
        single = _fetch(source, "model.safetensors")
        if single is None:
            raise EmotuneError(f"cost checkpoint {source}: no model.safetensors(.index.json) found (only safetensors weights are read)")
        check_safetensors(single)
        with safe_open(str(single), "pt") as f:
            weight_map = {k: "model.safetensors" for k in f.keys()}
    config_file = _fetch(source, "config.json")
    try:
        tied = json.loads(config_file.read_text()).get("tie_word_embeddings", True) if config_file else True
    except (ValueError, AttributeError) as err:
        raise EmotuneError(f"{config_file}: not a valid model config ({one_line(err)})") from None
    keys = HEAD_KEYS + (TIED_KEYS if tied or not any(k in weight_map for k in HEAD_KEYS) else ())
    key = next((k for k in keys if k in weight_map), None)
    if key is None:
        raise EmotuneError(f"cost checkpoint {source}: no LM head among its tensors (looked for {', '.join(keys)})")
    shard = _fetch(source, weight_map[key])
    if shard is None:
        raise EmotuneError(f"cost checkpoint {source}: shard {weight_map[key]} named by the index is missing")
    check_safetensors(shard)
    try:
        with safe_open(str(shard), "pt") as f:
            return f.get_tensor(key)
    except Exception as err:  # noqa: BLE001 - a shard cut inside the tensor data
        raise EmotuneError(f"{shard}: cannot read tensor {key} ({one_line(err)})") from None


COST_WHY = ("the external cost gives token id i the row i of that checkpoint's head, so it needs the student's "
            "tokenizer")


def check_cost_tokenizer(source: str, student_tok) -> None:
    """Refuse a cost source whose tokenizer is not the student's (an equal number of rows is not enough: another
    family's head of the same size would give every token another token's embedding)."""
    other = load_checkpoint_tokenizer(source, KEY, "the external cost checks that its tokenizer is the student's")
    check_same_tokenizer(other, student_tok, f"{KEY} ({source})", "cost source", COST_WHY)


def external_cost(source: str, vocab_size: int, tokenizer=None) -> CostEmbedding:
    """An `external` cost embedding from another checkpoint; its vocabulary must match the model's, and its
    tokenizer the student's `tokenizer` where given."""
    if tokenizer is not None:
        check_cost_tokenizer(source, tokenizer)
    return CostEmbedding.external(load_lm_head(source), vocab_size, name=f"LM head of {source}")
