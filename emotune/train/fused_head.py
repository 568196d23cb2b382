"""The training stage's fused loss: the model body's hidden states + the LM-head weight, never the logits.

    out = fused_causal_lm_loss(engine_or_model, batch, objective)   # LossOutput, same as the plain path
    engine.backward(out.loss)

How: the whole model is called as usual (`model(input_ids, attention_mask)`, through any DeepSpeed
engine / PEFT wrapper, so every hook runs), but for that one call the LM head's `forward` is replaced
by one that returns the fused loss (`emotune.objectives.fused.fused_loss`) instead of `[B, T, V]`
logits; the model hands it back in `.logits`. Running the loss *inside* the head module's forward is
what makes DeepSpeed ZeRO-3 work: its pre-forward hook gathers the partitioned head weight for the
loss, its backward hooks re-gather it, and the gradient the fused loss returns for the weight lands
on ZeRO's partitioned parameter and is reduce-scattered like any other.

Heads handled: `nn.Linear` (with or without bias), tied input embeddings (the same Parameter), PEFT
LoRA on the LM head (logits h Wᵀ + s (h Aᵀ) Bᵀ per active adapter, gradients reach A and B),
PEFT `modules_to_save` copies. Under ZeRO-3 the parameters of such nested head modules are
registered as external parameters of the head, so they are gathered for its forward and backward.
Models whose logits are transformed after the head (soft-capping, logit scales) and LoRA heads with
an active dropout in training cannot be fused exactly: they fall back to the plain path with one
warning naming the reason.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from emotune.objectives import LossOutput
from emotune.objectives.fused import fused_loss
from emotune.objectives.registry import Objective
from emotune.train import teacher as teachers
from emotune.train.model import hf_model

# Config attributes of models that transform the logits after the LM head (Gemma 2/3, Cohere, Granite...).
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_logits_scale")
_NO_EFFECT = (None, 1, 1.0)
_warned: set[str] = set()


class Unfusable(Exception):
    """The head cannot be replaced by hidden @ Wᵀ + b exactly; the message says why."""


def unfusable_reason(model: nn.Module) -> str | None:
    core = hf_model(model)
    config = getattr(core, "config", None)
    for key in _LOGIT_TRANSFORMS:
        if getattr(config, key, None) not in _NO_EFFECT:
            return f"the model transforms its logits after the LM head (config.{key}={getattr(config, key)!r})"
    head = core.get_output_embeddings() if hasattr(core, "get_output_embeddings") else None
    if head is None:
        return f"{type(core).__name__} has no output embedding (get_output_embeddings() is None)"
    try:
        _head_parts(head, compute=False)
    except Unfusable as err:
        return str(err)
    return None


def _peft_classes():
    try:
        from peft.tuners.lora import LoraLayer
        from peft.utils.other import ModulesToSaveWrapper
    except ImportError:  # peft is optional for full fine-tuning
        return (), ()
    return (LoraLayer,), (ModulesToSaveWrapper,)


def _head_parts(head: nn.Module, compute: bool = True) -> tuple[Tensor, Tensor | None, Tensor, list]:
    """(W, bias, base weight, LoRA [(A, B, scale)]) with head(x) == x @ W.T + bias + sum scale (x Aᵀ) Bᵀ.
    The adapters stay separate factors (W + scale B A rounded into a bf16 W loses small deltas). The base weight feeds an adaptive cost
    (as `output_embedding(model).weight` does on the plain path). Raises Unfusable. `compute=False` only
    checks (outside forward, where ZeRO-3 parameters are placeholders)."""
    lora_types, save_types = _peft_classes()
    if save_types and isinstance(head, save_types):
        if head.disable_adapters or not head.active_adapters or head.active_adapters[0] not in head.modules_to_save:
            return _head_parts(head.original_module, compute)
        return _head_parts(head.modules_to_save[head.active_adapters[0]], compute)
    if lora_types and isinstance(head, lora_types):
        weight, bias, base, lora = _head_parts(head.get_base_layer(), compute)
        if head.disable_adapters or head.merged:
            return weight, bias, base, lora
        for name in head.active_adapters:
            if name not in head.lora_A.keys():
                continue
            if name in getattr(head, "lora_variant", {}):
                raise Unfusable(f"LoRA variant {type(head.lora_variant[name]).__name__} on the LM head")
            dropout = head.lora_dropout[name]
            if dropout.training and getattr(dropout, "p", 0.0) > 0:
                raise Unfusable("lora_dropout > 0 on the LM head while training (set lora.dropout 0 or leave lm_head out)")
            if not compute:
                continue
            a, b, scale = head.lora_A[name], head.lora_B[name], head.scaling[name]
            lora = [*lora, (a.weight, b.weight, scale)]
            if b.bias is not None:
                extra = (b.bias * scale).to(weight.dtype)
                bias = extra if bias is None else bias + extra
        return weight, bias, base, lora
    if isinstance(head, nn.Linear):
        return head.weight, head.bias, head.weight, []
    raise Unfusable(f"LM head of type {type(head).__name__} is not a linear layer the fused loss knows")


def _register_nested_params(head: nn.Module) -> None:
    """ZeRO-3 gathers only a module's own parameters for its forward; the head's forward now reads the
    parameters of its children (LoRA A/B, the base layer), so make them the head's external parameters."""
    own = {id(p) for p in head.parameters(recurse=False)}
    nested = [p for p in head.parameters() if hasattr(p, "ds_id") and id(p) not in own]
    if nested:
        import deepspeed  # only reached when DeepSpeed already owns the parameters

        for p in nested:
            deepspeed.zero.register_external_parameter(head, p)


@contextmanager
def _no_teacher():
    yield None, None


@contextmanager
def _head_returns_loss(head: nn.Module, labels: Tensor, objective: Objective, num_items, chunk_size, box: dict,
                       teacher: tuple | None = None):
    def forward(hidden: Tensor, *args, **kwargs) -> Tensor:
        weight, bias, base, lora = _head_parts(head)
        # the teacher's head weight, gathered for this one call under ZeRO-3, applied chunk by chunk inside
        with teachers.gathered_head(teacher[1]) if teacher is not None else _no_teacher() as (w_t, b_t):
            out = fused_loss(hidden, weight, labels.to(hidden.device), objective, chunk_size=chunk_size,
                             num_items_in_batch=num_items, bias=bias, live_head=base.detach(), lora=lora,
                             teacher=None if teacher is None else (teacher[0], w_t, b_t))
        box["out"] = out
        return out.loss

    _register_nested_params(head)
    had_own = "forward" in head.__dict__
    previous = head.__dict__.get("forward")
    head.forward = forward
    try:
        yield
    finally:
        if had_own:
            head.forward = previous
        else:
            del head.forward


def fused_causal_lm_loss(model: nn.Module, batch: dict, objective: Objective, chunk_size: int | None = None,
                         teacher: nn.Module | None = None) -> LossOutput:
    """The objective's `LossOutput` for an HF causal LM and a batch (input_ids, attention_mask, labels,
    optional num_items_in_batch), equal to `objective(model(**inputs).logits, labels)` without the logits.
    `teacher`: the frozen teacher model / engine of a teacher target (emotune.train.teacher)."""
    inputs = dict(batch)
    labels = inputs.pop("labels")
    num_items = inputs.pop("num_items_in_batch", None)
    if objective.needs_teacher and teacher is None:
        raise ValueError(f"objective {objective.name!r} with target 'teacher' needs the teacher model")
    teacher = teacher if objective.needs_teacher else None
    reason = unfusable_reason(model)
    if reason is not None:
        if reason not in _warned:
            _warned.add(reason)
            warnings.warn(f"fused loss unavailable, computing the full logits instead: {reason}", stacklevel=2)
        logits = model(**inputs, use_cache=False).logits
        t_logits = None if teacher is None else teachers.teacher_logits(teacher, inputs)
        return objective(logits, labels, num_items_in_batch=num_items, teacher_logits=t_logits)
    head = hf_model(model).get_output_embeddings()
    box: dict = {}
    t = None if teacher is None else (teachers.teacher_hidden(teacher, inputs), teachers.teacher_head(teacher))
    with _head_returns_loss(head, labels, objective, num_items, chunk_size, box, t):
        result = model(**inputs, use_cache=False)
    loss = result.logits if hasattr(result, "logits") else result[0]
    if "out" not in box or not torch.is_tensor(loss) or loss.dim() != 0:
        raise RuntimeError(f"{type(hf_model(model)).__name__} did not pass its LM head's output through as the logits; "
                           "set fused_loss: false for this model")
    out = box["out"]
    out.loss = loss  # the tensor the model returned: ZeRO-3's backward hooks are attached to it, not to ours
    return out
