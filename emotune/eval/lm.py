"""The one way the evaluator talks to a causal language model: loading, padding, next-token log-probs
and token NLLs. The ICL scorer, the LM metrics, the sampler and the synthetic oracle all go through here.

    load_causal_lm      dtype / device resolution, the remote-code policy (off unless asked) and the
                        local-folder / offline-hub checks of emotune.hub, before transformers is called
    pad_right/pad_left  token id lists -> (ids, attention mask) tensors
    padded_batches      right-padded batches in the given order, or longest first (less padding)
    next_token_logprobs log-softmax of the logits, in float32 (or float64) whatever the model dtype
    token_nlls          -log p(x_t | x_<t) for t = 1..T-1 of every sequence, float64 arrays

A "scorer" is either a Hugging Face causal LM or any object with exact next-token log-probabilities
(`next_token_logprobs(input_ids, attention_mask) -> [B, T, V]`, e.g. a synthetic oracle).
"""

from __future__ import annotations

import inspect
from typing import Any, Container, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from emotune.errors import EmotuneError, one_line

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


# ---------------------------------------------------------------- loading

def resolve_dtype(name: str, device: str) -> torch.dtype:
    """`auto` is bfloat16 on a GPU that has it, else float32."""
    if name == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise EmotuneError(f"argument dtype={name!r}: use float32, bfloat16, float16 or auto")
    return DTYPES[name]


def resolve_device(name: str | None) -> str:
    """The device to evaluate on; one that does not exist here is an error naming it, not a crash later."""
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(str(name))
    except (RuntimeError, ValueError):
        raise EmotuneError(f"argument device={name!r}: not a device (use cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise EmotuneError(f"argument device={name!r}: no CUDA device is available here (use device=cpu)")
        if dev.index is not None and dev.index >= count:
            raise EmotuneError(f"argument device={name!r}: only {count} CUDA device(s) here (cuda:0..cuda:{count - 1})")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise EmotuneError(f"argument device={name!r}: MPS is not available here (use device=cpu)")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise EmotuneError(f"argument device={name!r}: unsupported device type {dev.type!r} (use cpu, cuda, cuda:N, mps)")
    return str(dev)


def load_causal_lm(path: str, key: str = "--model", dtype: str = "auto", device: str | None = None,
                   trust_remote_code: bool = False):
    """(model in eval mode on `device`, tokenizer) of a local folder or hub id; `key` names the setting
    that gave the path in every error (`--model`, `oracle`, `reference`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emotune.hub import resolve

    path = str(path)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(str(dtype), device)
    extra = resolve(path, key, need_tokenizer=True, need_weights=True)
    where = f"{key} {path}" if key.startswith("-") else f"{key}={path}"
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **extra)
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, trust_remote_code=trust_remote_code,
                                                         **extra)
        except TypeError:  # transformers < 4.56 calls it torch_dtype
            model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch_dtype,
                                                         trust_remote_code=trust_remote_code, **extra)
    except (OSError, ValueError) as err:
        raise EmotuneError(f"{where}: cannot load a causal LM and its tokenizer ({one_line(err)})") from None
    return model.to(device).eval(), tokenizer


# ---------------------------------------------------------------- model calls

def model_device(model) -> torch.device:
    """Where the model's inputs go: its `device` (Hugging Face models, parameter-free stand-ins), else the
    device of its first parameter."""
    dev = getattr(model, "device", None)
    return dev if isinstance(dev, torch.device) else next(model.parameters()).device


def cache_kwarg(model) -> str:
    """transformers >= 5.24 names the cache argument `cache`; earlier versions `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def output_cache(out):
    """The KV cache of a model output, under either name (None if there is none)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, width] ids (padding `pad_id`) and attention mask, every sequence starting at position 0."""
    return _pad(seqs, pad_id, left=False)


def pad_left(seqs: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, width] ids and attention mask, every sequence ending at the last position (for generation)."""
    return _pad(seqs, pad_id, left=True)


def _pad(seqs: Sequence[Sequence[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        cols = slice(width - len(s), width) if left else slice(0, len(s))
        ids[r, cols] = torch.tensor(list(s), dtype=torch.long)
        mask[r, cols] = 1
    return ids, mask


def padded_batches(seqs: Sequence[Sequence[int]], batch_size: int, longest_first: bool = False,
                   pad_id: int = 0) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Right-padded batches; yields (indices into `seqs`, ids, mask). `longest_first` sorts by length
    (less padding); otherwise the batches keep the given order."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i])) if longest_first else list(range(len(seqs)))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = pad_right([seqs[i] for i in idx], pad_id)
        yield idx, ids, mask


def next_token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, vocab_size: int | None = None,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[B, T, V] log p(. | x_0..x_t) of a causal LM: log-softmax in `dtype` (float32 or wider) whatever the
    model's dtype; `vocab_size` keeps the first V logits (padded embedding matrices), renormalised."""
    dev = model_device(model)
    logits = model(input_ids=input_ids.to(dev), attention_mask=attention_mask.to(dev)).logits
    if vocab_size is not None:
        logits = logits[..., :vocab_size]
    return torch.log_softmax(logits.to(dtype), dim=-1)


def row_nlls(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-position NLL in float32: logits [N, V], targets [N]."""
    return F.cross_entropy(logits.float(), targets, reduction="none")


@torch.no_grad()
def token_nlls(scorer: Any, seqs: Sequence[Sequence[int]], batch_size: int = 8, longest_first: bool = False,
               progress: bool = False, desc: str = "scoring", select: Container[int] | None = None
               ) -> list[np.ndarray]:
    """-log p(x_t | x_<t) for t = 1..T-1 of every sequence (float64 arrays; empty for T < 2).

    A causal LM is run on right-padded batches and each row's NLLs taken from its logits (float32
    cross-entropy over the real positions only); an object with `next_token_logprobs` (an exact oracle)
    gives log-probs that are picked directly. `select` (sequence indices): run only the batches holding
    one of them — the very batches of the whole run, so their NLLs are bit for bit the same (a shard of
    a task, emotune.tasks.shards); the other entries stay None."""
    out: list[np.ndarray | None] = [None] * len(seqs)
    batches = padded_batches(seqs, batch_size, longest_first)
    if progress:
        batches = _progress(batches, desc, (len(seqs) + batch_size - 1) // batch_size)
    exact = hasattr(scorer, "next_token_logprobs")
    for idx, ids, mask in batches:
        if select is not None and not any(i in select for i in idx):
            continue
        if exact:
            _pick_nlls(scorer, seqs, idx, ids, mask, out)
            continue
        ids, mask = ids.to(model_device(scorer)), mask.to(model_device(scorer))
        logits = scorer(input_ids=ids, attention_mask=mask).logits
        for r, i in enumerate(idx):
            n = len(seqs[i])
            out[i] = row_nlls(logits[r, : n - 1], ids[r, 1:n]).double().cpu().numpy() if n > 1 else np.zeros(0)
    return out  # type: ignore[return-value]


def _pick_nlls(scorer, seqs, idx, ids, mask, out) -> None:
    logp = scorer.next_token_logprobs(ids, mask)
    if logp.shape[:2] != ids.shape:
        raise EmotuneError(f"scorer returned log-probs of shape {tuple(logp.shape)} for inputs {tuple(ids.shape)}")
    target = ids[:, 1:].to(logp.device)
    picked = logp[:, :-1].gather(-1, target.unsqueeze(-1)).squeeze(-1).double().cpu().numpy()
    for r, i in enumerate(idx):
        out[i] = -picked[r, : max(len(seqs[i]) - 1, 0)]


def _progress(it: Iterable, desc: str, total: int | None = None):
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, leave=False, total=total)
