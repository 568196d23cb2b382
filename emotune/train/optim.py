"""The optimizer's inputs: the run's length, parameter groups (no weight decay on biases and norms), and
the learning-rate schedule DeepSpeed steps after every applied optimizer step."""

from __future__ import annotations

import math

import torch


def schedule_length(cfg, steps_per_epoch: int) -> tuple[int, int]:
    """(total optimizer steps, warmup steps): max_steps if set, else the epochs; warmup_steps, else the ratio."""
    total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.num_train_epochs * steps_per_epoch)
    warmup = cfg.warmup_steps or math.ceil(cfg.warmup_ratio * total_steps)
    return total_steps, warmup


def param_groups(model, weight_decay: float) -> list[dict]:
    """Trainable parameters in two groups, decayed and not (biases, norms), in the model's order; empty groups dropped."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name.endswith("bias") or "norm" in name.lower() or ".ln_" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def lr_lambda(total_steps: int, warmup_steps: int, kind: str):
    """LR factor after `step` applied steps. Not transformers.get_scheduler: its warmup is step/warmup (the first
    step at LR 0), ours (step+1)/warmup (the first step already learns); changing it would change every run's LRs."""
    def f(step: int) -> float:  # DeepSpeed steps the scheduler after each optimizer step
        if kind != "constant" and step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        if kind in ("constant", "constant_with_warmup"):
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(max(progress, 0.0), 1.0)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)

    return f


def lr_scheduler(total_steps: int, warmup_steps: int, kind: str):
    """The scheduler factory deepspeed.initialize calls with the optimizer it built."""
    return lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total_steps, warmup_steps, kind))
