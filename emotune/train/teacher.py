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

import torch
from torch import Tensor, nn

from emotune.errors import EmotuneError, one_line
from emotune.hub import resolve
from emotune.train import same_tokenizer
from emotune.train.model import hf_model
from emotune.train.same_tokenizer import load_checkpoint_tokenizer


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

    from emotune.train.model import load_tokenizer, student_tokenizer_exists

    t = cfg.teacher
    extra = resolve(t.model, "teacher.model", t.revision, need_weights=True)
    try:
        AutoConfig.from_pretrained(t.model, revision=t.revision, trust_remote_code=t.trust_remote_code, **extra)
    except (OSError, ValueError) as err:
        raise EmotuneError(f"teacher.model: cannot load a model config from {t.model!r}: {one_line(err)}") from None
    if student_tokenizer_exists(cfg):  # else load_tokenizer would train (and write) one: checked in load_teacher
        check_same_tokenizer(teacher_tokenizer(cfg), load_tokenizer(cfg))


TEACHER_WHY = "distillation compares the two distributions id by id, so it needs the student's tokenizer"


def teacher_tokenizer(cfg):
    """The tokenizer saved with the teacher (a checkpoint without one cannot be checked against the student's)."""
    t = cfg.teacher
    return load_checkpoint_tokenizer(t.model, "teacher.model", "distillation checks that the teacher's tokenizer is "
                                     "the student's", t.revision, t.trust_remote_code)


def check_same_tokenizer(teacher_tok, student_tok) -> None:
    """Refuse a teacher whose tokenizer maps the student's text to other ids (emotune.train.same_tokenizer)."""
    same_tokenizer.check_same_tokenizer(teacher_tok, student_tok, "teacher.model", "teacher", TEACHER_WHY)


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
