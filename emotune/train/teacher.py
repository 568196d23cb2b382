"""The distillation teacher: a frozen causal LM with the student's vocabulary, partitioned like the student.

    teacher = load_teacher(cfg, ds_config, vocab)        # after the student, while its HfDeepSpeedConfig is alive
    out = loss_step(engine, batch, objective, fused, teacher)

Loading: `from_pretrained` under the student's `HfDeepSpeedConfig`, so ZeRO-3 builds it inside `zero.Init` (every
rank holds 1/world of each weight); frozen (eval mode, requires_grad False); then `deepspeed.initialize` with the
student's ZeRO config minus the optimizer and scheduler, which gives an inference-only engine (DeepSpeed's
parameter-offload hooks that gather each layer for its forward; no gradients, no optimizer state).

The step: the teacher runs under no_grad on the student's inputs. On the fused path its LM head is swapped for
the identity for that call, so it returns its last hidden states, never [B, T, V] logits; the student's fused
head then applies the teacher's head weight chunk by chunk (gathered for that one call under ZeRO-3). On the
plain path it returns its logits as usual.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from emotune.errors import EmotuneError, one_line
from emotune.hub import resolve
from emotune.train.fused_head import hf_model


def teacher_ds_config(ds_config: dict) -> dict:
    """The student's DeepSpeed config without what only training needs: an inference-only ZeRO engine."""
    out = copy.deepcopy(ds_config)
    for key in ("optimizer", "scheduler", "gradient_clipping"):
        out.pop(key, None)
    return out


def check_teacher(cfg) -> None:
    """Preflight: the teacher's checkpoint exists, its config loads and its tokenizer is the student's (before any
    process group, before anything is written). A student tokenizer trained on the data (not there yet) is compared
    when the teacher is loaded (`load_teacher`)."""
    from transformers import AutoConfig

    from emotune.train.model import load_tokenizer

    t = cfg.teacher
    extra = resolve(t.model, "teacher.model", t.revision, need_weights=True)
    try:
        AutoConfig.from_pretrained(t.model, revision=t.revision, trust_remote_code=t.trust_remote_code, **extra)
    except (OSError, ValueError) as err:
        raise EmotuneError(f"teacher.model: cannot load a model config from {t.model!r}: {one_line(err)}") from None
    m = cfg.model
    trained = Path(cfg.output_dir) / "tokenizer" / "tokenizer_config.json"
    if not m.train_tokenizer_vocab_size or trained.is_file():  # load_tokenizer would train (and write) one: later
        check_same_tokenizer(teacher_tokenizer(cfg), load_tokenizer(cfg))


def teacher_tokenizer(cfg):
    """The tokenizer saved with the teacher (a checkpoint without one cannot be checked against the student's)."""
    from transformers import AutoTokenizer

    t = cfg.teacher
    try:
        extra = resolve(t.model, "teacher.model", t.revision, need_tokenizer=True, filename="tokenizer_config.json")
    except EmotuneError as err:
        raise EmotuneError(f"{err}; distillation checks that the teacher's tokenizer is the student's") from None
    try:
        return AutoTokenizer.from_pretrained(t.model, revision=t.revision, trust_remote_code=t.trust_remote_code, **extra)
    except Exception as err:  # transformers raises what the tokenizer's family raises (OSError, ValueError, ...)
        raise EmotuneError(f"teacher.model: cannot load a tokenizer from {t.model!r}: {one_line(err)}") from None


# Text the two tokenizers must split alike: words, digits, runs of spaces, tabs and newlines, punctuation, accents,
# CJK, emoji (byte fallback). Equal vocabularies with other merges or normalisers give these other ids.
PROBES = ("The quick brown fox jumps over the lazy dog. 0123456789 3.14",
          "  two spaces,\ttab\nnew line;  punctuation!? (x) [y] {z} <w> @#$%^&*_+=|~`'\"",
          "caf\u00e9 na\u00efve Stra\u00dfe \u6771\u4eac \U0001f600 \u2014 \u201cquotes\u201d")
# pad is left out: padded positions are masked and never targets, and a run may set pad = eos on its own copy
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token")


def check_same_tokenizer(teacher_tok, student_tok) -> None:
    """Refuse a teacher whose tokenizer maps the student's text to other ids: the same token -> id table (added tokens
    included), the same BOS / EOS / UNK, the same ids for a few probe texts."""
    why = _tokenizer_difference(teacher_tok, student_tok)
    if why:
        raise EmotuneError(f"teacher.model: the teacher's tokenizer is not the student's ({why}); distillation compares "
                           "the two distributions id by id, so it needs the student's tokenizer")


def _tokenizer_difference(t, s) -> str | None:
    tv, sv = t.get_vocab(), s.get_vocab()
    if tv != sv:
        if len(tv) != len(sv):
            return f"{len(tv)} tokens, the student's {len(sv)}"
        token = min((k for k in tv.keys() | sv.keys() if tv.get(k) != sv.get(k)), key=lambda k: min(tv.get(k, 1 << 62),
                                                                                                    sv.get(k, 1 << 62)))
        if token not in sv or token not in tv:
            return f"token {token!r} is only in the {'teacher' if token in tv else 'student'}'s vocabulary"
        return f"token {token!r} is id {tv[token]} for the teacher, {sv[token]} for the student"
    for name in SPECIAL_TOKENS:
        if getattr(t, name) != getattr(s, name):
            return f"{name} {getattr(t, name)!r}, the student's {getattr(s, name)!r}"
    for text in PROBES:
        ti, si = t(text)["input_ids"], s(text)["input_ids"]
        if ti != si:
            return f"{text[:20]!r}... is {ti[:8]}... for the teacher, {si[:8]}... for the student"
    return None


def load_teacher(cfg, ds_config: dict, vocab: int, tokenizer=None) -> nn.Module:
    """The frozen teacher engine. Its output vocabulary must be the student's (`vocab` rows); with the student's
    `tokenizer`, so must its tokenizer be (`check_same_tokenizer`)."""
    import deepspeed
    from transformers import AutoModelForCausalLM

    from emotune.train.model import DTYPES, output_vocab_size

    t = cfg.teacher
    if tokenizer is not None:
        check_same_tokenizer(teacher_tokenizer(cfg), tokenizer)
    dtype = DTYPES[cfg.dtype_name if t.torch_dtype == "auto" else t.torch_dtype]
    extra = resolve(t.model, "teacher.model", t.revision, need_weights=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(t.model, revision=t.revision, dtype=dtype,
                                                     trust_remote_code=t.trust_remote_code, **extra)
    except (OSError, ValueError) as err:
        raise EmotuneError(f"teacher.model: cannot load a causal LM from {t.model!r}: {one_line(err)}") from None
    teacher_vocab = output_vocab_size(model)
    if teacher_vocab != vocab:
        raise EmotuneError(f"teacher.model: the teacher's vocabulary ({teacher_vocab} output rows) is not the student's "
                           f"({vocab}); distillation needs the same tokenizer")
    model.config.use_cache = False
    model.requires_grad_(False)
    model.eval()
    engine, *_ = deepspeed.initialize(model=model, config=teacher_ds_config(ds_config))
    engine.eval()
    return engine


def teacher_head(teacher: nn.Module) -> nn.Linear:
    head = hf_model(teacher).get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise EmotuneError(f"teacher.model: its LM head is a {type(head).__name__}, not a linear layer")
    return head


@contextmanager
def _head_is_identity(head: nn.Module):
    head.forward = lambda hidden, *args, **kwargs: hidden
    try:
        yield
    finally:
        del head.forward


def teacher_hidden(teacher: nn.Module, inputs: dict) -> Tensor:
    """The teacher's last hidden states `[B, T, H_t]` for the student's inputs, under no_grad (all its hooks run)."""
    with torch.no_grad(), _head_is_identity(teacher_head(teacher)):
        return teacher(**inputs, use_cache=False).logits


def teacher_logits(teacher: nn.Module, inputs: dict) -> Tensor:
    """The teacher's full logits `[B, T, V]` (the plain path), under no_grad."""
    with torch.no_grad():
        return teacher(**inputs, use_cache=False).logits


@contextmanager
def gathered_head(head: nn.Linear):
    """(weight, bias) of the teacher's head, gathered on every rank under ZeRO-3 for the duration (read only)."""
    params = [p for p in (head.weight, head.bias) if p is not None]
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            yield head.weight, head.bias
    else:
        yield head.weight, head.bias
