"""One micro-batch's loss: the only place the training stage touches the objective.

    out = loss_step(engine, batch, objective, fused=cfg.fused_loss, teacher=teacher)   # LossOutput
    engine.backward(out.loss)

`batch` holds input_ids, attention_mask, labels (unshifted, -100 = ignored) and optionally
`num_items_in_batch`: the divisor of the summed per-token loss that makes gradient accumulation
over micro-batches and data-parallel ranks equal one big batch (see train.py). The fused path
(hidden states + LM-head weight, never the [N, V] logits) lives in `emotune.train.fused_head`
and takes the same batch.
"""

from __future__ import annotations

from emotune.objectives import LossOutput
from emotune.train.fused_head import fused_causal_lm_loss


def loss_step(model, batch: dict, objective, fused: bool, teacher=None) -> LossOutput:
    """`teacher`: the frozen teacher (emotune.train.teacher) of an objective with a teacher target; its forward
    runs here, under no_grad, on the same inputs."""
    if fused:
        return fused_causal_lm_loss(model, batch, objective, teacher=teacher)
    batch = dict(batch)
    labels = batch.pop("labels")
    num_items = batch.pop("num_items_in_batch", None)
    logits = model(**batch, use_cache=False).logits
    t_logits = None
    if objective.needs_teacher:
        from emotune.train.teacher import teacher_logits

        if teacher is None:
            raise ValueError(f"objective {objective.name!r} with target 'teacher' needs the teacher model")
        t_logits = teacher_logits(teacher, batch)
    return objective(logits, labels, num_items_in_batch=num_items, teacher_logits=t_logits)
