"""Adopt EMO in one line from Hugging Face tooling.

    Trainer(model=model, ..., compute_loss_func=emotune.objectives.trainer_loss(model, "emo"))   # also TRL
    emotune.objectives.attach(model, "emo")   # model(input_ids, labels=labels).loss is now EMO

`attach` sets `model.loss_function` (the hook transformers' causal-LM heads call when `labels` is
given): with `labels=None` the model still returns ordinary logits and `generate()` is untouched.
Both keep the last step's diagnostics in `.last_metrics` (plain CE, mean DEMD, mean weight).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from emotune.objectives.cost import CostEmbedding
from emotune.objectives.registry import Objective, build_objective, needs_cost


def _cost_for(model: nn.Module, name: str, cost: str | CostEmbedding | Tensor, params: dict) -> CostEmbedding | Tensor | None:
    """The cost embedding objective `name` with `params` needs (None when it needs none)."""
    if not needs_cost(name, params):
        return None
    if not isinstance(cost, str):
        return cost
    if cost == "frozen":
        return CostEmbedding.frozen(model)
    if cost == "adaptive":
        return CostEmbedding.adaptive(model)
    raise ValueError(f"cost must be 'frozen', 'adaptive', a CostEmbedding or a tensor, got {cost!r}")


class _HFLoss:
    def __init__(self, objective: Objective):
        self.objective = objective
        self.last_metrics: dict[str, float] = {}

    def _run(self, logits: Tensor, labels: Tensor, num_items_in_batch) -> Tensor:
        out = self.objective(logits, labels, num_items_in_batch=num_items_in_batch)
        self.last_metrics = out.metrics()
        return out.loss


class TrainerLoss(_HFLoss):
    """`compute_loss_func(outputs, labels, num_items_in_batch=None)` for `transformers.Trainer` / TRL."""

    def __call__(self, outputs: Any, labels: Tensor, num_items_in_batch=None) -> Tensor:
        logits = outputs["logits"] if isinstance(outputs, dict) or hasattr(outputs, "keys") else outputs[0]
        return self._run(logits, labels, num_items_in_batch)


class ModelLoss(_HFLoss):
    """`model.loss_function(logits, labels, vocab_size, num_items_in_batch=None, **kwargs)`."""

    def __call__(self, logits: Tensor, labels: Tensor, vocab_size: int | None = None, num_items_in_batch=None, **_: Any) -> Tensor:
        return self._run(logits, labels, num_items_in_batch)


def trainer_loss(model: nn.Module, name: str = "emo", cost: str | CostEmbedding | Tensor = "frozen", **params) -> TrainerLoss:
    """A `compute_loss_func` for HF Trainer / TRL. Build it after any `resize_token_embeddings`."""
    return TrainerLoss(build_objective(name, params, _cost_for(model, name, cost, params)))


def attach(model: nn.Module, name: str = "emo", cost: str | CostEmbedding | Tensor = "frozen", **params) -> nn.Module:
    """Make `model(..., labels=...)` compute this objective; returns the model."""
    model.loss_function = ModelLoss(build_objective(name, params, _cost_for(model, name, cost, params)))
    return model
