"""What the training loop sums and logs: one optimizer step's sums, the window between two log lines,
and the fp16 skipped-step counter.

Per-token diagnostics (ce, demd, weight) are summed weighted by each micro-batch's target count and
divided by the window's total count at log time, so a line is a per-token mean whatever the batch shapes.
The objective names which diagnostics it has (`Objective.logged`): the loop never asks for its name.
"""

from __future__ import annotations

import math
import time
from dataclasses import astuple, dataclass


@dataclass
class StepSums:
    """One optimizer step's sums over its micro-batches: loss (as optimised), and ce, demd, weight times
    each micro-batch's target count n, and n. All-reduced as one float64 vector."""

    loss: float = 0.0
    ce: float = 0.0
    demd: float = 0.0
    weight: float = 0.0
    n: float = 0.0

    def add(self, out) -> None:
        """Add one micro-batch's LossOutput."""
        n = float(out.n_tokens)
        self.loss += float(out.loss.detach())
        self.ce += float(out.ce) * n
        self.demd += (float(out.demd) * n) if out.demd is not None else 0.0
        self.weight += (float(out.weight) * n) if out.weight is not None else 0.0
        self.n += n

    def all_reduced(self, all_reduce_sum) -> "StepSums":
        return StepSums(*all_reduce_sum(list(astuple(self))))


class LogWindow:
    """The steps since the last log line: their step losses, summed StepSums, input tokens and wall time."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.loss = self.ce = self.demd = self.weight = self.n = self.steps = 0.0
        self.tokens, self.started = 0, time.time()

    def add(self, step_loss: float, sums: StepSums, n_inputs: int) -> None:
        self.loss += step_loss
        self.ce += sums.ce
        self.demd += sums.demd
        self.weight += sums.weight
        self.n += sums.n
        self.steps += 1.0
        self.tokens += n_inputs

    def record(self, step: int, epoch: float, lr: float, grad_norm, tokens_seen: int, logged: tuple[str, ...] = ()) -> dict:
        """The log line: mean step loss, per-token means, and the objective's own diagnostics (`logged`)."""
        n = max(self.n, 1.0)
        elapsed = max(time.time() - self.started, 1e-9)
        record = {"step": step, "epoch": epoch, "loss": self.loss / self.steps, "ce": self.ce / n,
                  "ppl": math.exp(min(self.ce / n, 50.0)), "lr": lr,
                  "grad_norm": float(grad_norm) if grad_norm is not None else None,
                  "tokens_seen": tokens_seen, "tokens_per_s": self.tokens / elapsed}
        for key in logged:
            record[key] = getattr(self, key) / n
        return record


class SkippedSteps:
    """fp16 dynamic loss scaling: when the scaled gradients overflow, DeepSpeed skips the update (no parameter
    change, no LR-scheduler step) and halves the scale. Such a step is logged and retried on the same data;
    it is not progress (no step, no tokens counted). Many in a row means the scale is stuck at its floor."""

    def __init__(self, limit: int = 40):
        self.limit, self.total, self.in_a_row = limit, 0, 0

    def applied(self, engine, step: int, report) -> bool:
        was_applied = getattr(engine, "was_step_applied", None)
        if was_applied is None or was_applied():
            self.in_a_row = 0
            return True
        self.total += 1
        self.in_a_row += 1
        scale = getattr(getattr(engine, "optimizer", None), "cur_scale", None)
        report({"step": step, "skipped_step": True, "loss_scale": None if scale is None else float(scale),
                "skipped_total": self.total})
        if self.in_a_row >= self.limit:
            raise RuntimeError(f"{self.in_a_row} optimizer steps in a row skipped for fp16 overflow at step {step} "
                               f"(loss scale {scale}): the loss or the gradients are not finite; lower the learning "
                               "rate, or train in bf16 / fp32")
        return False
