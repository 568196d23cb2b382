"""The cost embedding Ê of DEMD: cost(i, j) = 1 - cos(e_i, e_j) (docs/objectives.md, *DEMD*).

Ê is E with each row L2-normalised as `e / max(|e|, 1e-6)`: a zero row gives cost 1 to every
token instead of the official code's NaN. Ê never receives a gradient. Sources:

- `frozen` (default): a copy of the model's own output embedding (`lm_head.weight`, or the tied
  input embedding) taken once at setup, after any tokenizer resize. Under DeepSpeed ZeRO-3 the
  parameter is an empty placeholder outside its module's forward, so it is gathered first.
- `external`: the LM head of another checkpoint with the same vocabulary; hidden size may differ.
  (Reading it from a checkpoint's files is I/O and lives in `emotune.train.cost`.)
- `adaptive`: the live, detached LM head, re-normalised at every step.

The copy is deliberately a plain tensor held outside the model: not a parameter, and not a buffer
that DeepSpeed or `model.to(dtype)` would cast or partition.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from emotune.errors import EmotuneError

NORM_EPS = 1e-6
SOURCES = ("frozen", "external", "adaptive")


class CostEmbeddingError(EmotuneError, ValueError):
    """The cost embedding does not fit the model (vocabulary size, shape)."""


def normalize_rows(weight: Tensor, eps: float = NORM_EPS) -> Tensor:
    """Ê = E / max(|E|_row, eps), in float32 (float64 stays float64), detached."""
    w = weight.detach()
    w = w.to(torch.float64 if w.dtype == torch.float64 else torch.float32)
    return w / w.norm(dim=-1, keepdim=True).clamp_min(eps)


def output_embedding(model: nn.Module) -> nn.Parameter:
    """The weight that produces the logits: the LM head, or the input embedding when tied/absent."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None and hasattr(model, "get_input_embeddings"):
        head = model.get_input_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise CostEmbeddingError(f"{type(model).__name__} has no output or input embedding to build the cost from")
    return head.weight


def _full_copy(param: Tensor) -> Tensor:
    """A full `[V, H]` copy of a parameter, gathering it first if DeepSpeed ZeRO-3 partitioned it."""
    if hasattr(param, "ds_id"):  # ZeRO-3: `.data` is a placeholder of shape [0] outside forward
        import deepspeed  # only reached when DeepSpeed already owns the parameter

        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            copy = param.detach().clone()
    else:
        copy = param.detach().clone()
    if copy.dim() != 2 or copy.shape[0] == 0:
        raise CostEmbeddingError(f"cost embedding must be a [V, H] matrix, got shape {tuple(copy.shape)}")
    return copy


class CostEmbedding:
    """Holds Ê (or, for `adaptive`, the live head it is taken from) and hands it to the losses."""

    def __init__(self, weight: Tensor, source: str = "frozen", eps: float = NORM_EPS):
        if source not in SOURCES:
            raise CostEmbeddingError(f"cost source must be one of {SOURCES}, got {source!r}")
        self.source = source
        self.eps = eps
        if source == "adaptive":
            self._live = weight  # read (detached) at every call
            self._matrix = None
        else:
            self._live = None
            self._matrix = normalize_rows(weight, eps)

    @classmethod
    def frozen(cls, model_or_weight: nn.Module | Tensor, eps: float = NORM_EPS) -> "CostEmbedding":
        weight = output_embedding(model_or_weight) if isinstance(model_or_weight, nn.Module) else model_or_weight
        return cls(_full_copy(weight), "frozen", eps)

    @classmethod
    def external(cls, weight: Tensor, vocab_size: int, eps: float = NORM_EPS, name: str = "external LM head") -> "CostEmbedding":
        check_vocab(weight.shape[0], vocab_size, name)
        return cls(_full_copy(weight), "external", eps)

    @classmethod
    def adaptive(cls, model: nn.Module, eps: float = NORM_EPS) -> "CostEmbedding":
        return cls(output_embedding(model), "adaptive", eps)

    @property
    def vocab_size(self) -> int:
        return int((self._live if self._matrix is None else self._matrix).shape[0])

    def matrix(self, device: torch.device | None = None) -> Tensor:
        """Ê as a `[V, H']` float32 tensor without gradient."""
        if self._matrix is None:
            live = _full_copy(self._live) if hasattr(self._live, "ds_id") else self._live
            return normalize_rows(live, self.eps).to(device or self._live.device)
        if device is not None and self._matrix.device != torch.device(device):
            self._matrix = self._matrix.to(device)
        return self._matrix

    def to(self, device) -> "CostEmbedding":
        if self._matrix is not None:
            self._matrix = self._matrix.to(device)
        return self


def check_vocab(cost_rows: int, vocab_size: int, name: str = "cost embedding") -> None:
    if cost_rows != vocab_size:
        raise CostEmbeddingError(
            f"{name} has {cost_rows} rows but the model's vocabulary has {vocab_size} tokens: "
            "the cost embedding must come from a model with the same vocabulary (resize it the same way)"
        )


def as_matrix(cost: Tensor | CostEmbedding, vocab_size: int, device: torch.device) -> Tensor:
    """Ê for a loss call: a CostEmbedding's matrix, or a raw E normalised here."""
    if isinstance(cost, CostEmbedding):
        e_hat = cost.matrix(device)
    elif isinstance(cost, Tensor):
        e_hat = normalize_rows(cost).to(device)
    else:
        raise CostEmbeddingError(f"EMO needs a cost embedding (Tensor or CostEmbedding), got {type(cost).__name__}")
    check_vocab(e_hat.shape[0], vocab_size)
    return e_hat
