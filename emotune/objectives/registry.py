"""Objectives selected by name + parameters: what run configs use.

    objective = build_objective("emo", {"variant": "emo2", "ratio_clamp": 3.0}, cost=CostEmbedding.frozen(model))
    out = objective(logits, labels)          # LossOutput
    out.loss.backward(); log(out.metrics())

A new objective is one `Entry` here (its plain loss and combine rule in losses.py) and its test: the plain
path, the fused path (fused.py), the training log and the HF hooks read everything from the entry.
Aliases `emo1`, `emo2` and `demd` are `emo` with that variant. Parameters are checked here, so a bad
config fails before any model is loaded, with a message naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import Tensor

from emotune.errors import EmotuneError
from emotune.objectives import losses
from emotune.objectives.common import LossOutput
from emotune.objectives.cost import CostEmbedding


def _in_range(lo: float, hi: float, lo_open: bool = False) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and (lo < v if lo_open else lo <= v) and v <= hi


def _one_of(*choices) -> Callable[[Any], bool]:
    return lambda v: v in choices


def _positive_or_none(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0)


@dataclass(frozen=True)
class Entry:
    """One objective: its plain loss on logits, its per-token combine rule (the one both the plain and the fused
    path run), its parameters {name: (default, check, description)}, and what it needs and logs."""

    plain: Callable[..., LossOutput]
    rule: Callable[..., losses.Combined]
    params: dict[str, tuple[Any, Callable[[Any], bool], str]] = field(default_factory=dict)
    needs_cost: bool = False
    logged: tuple[str, ...] = ()  # LossOutput diagnostics it fills besides ce, in log order
    token_wise: Callable[[dict], bool] = lambda params: True  # rule's coefficients of token t depend on token t only


OBJECTIVES: dict[str, Entry] = {
    "mle": Entry(losses.mle, losses.mle_rule),
    "tailr": Entry(
        losses.tailr, losses.tailr_rule,
        {
            "gamma": (0.1, _in_range(0.0, 1.0, lo_open=True), "γ in (0, 1]; paper: 1e-7, 0.1, 0.8"),
            "min_weight": (0.2, _in_range(0.0, 1.0), "lower clamp of the weight, in [0, 1]; paper: 0.2-0.3"),
        },
        logged=("weight",),
    ),
    "mixce": Entry(losses.mixce, losses.mixce_rule, {"eta": (0.8, _in_range(0.0, 1.0), "mixing ratio η in [0, 1]; 1 is MLE")},
                   logged=("weight",)),
    "emo": Entry(
        losses.emo, losses.emo_rule,
        {
            "variant": ("emo1", _one_of(*losses.EMO_VARIANTS), "emo1 | emo2 | demd"),
            "ratio_clamp": (None, _positive_or_none, "cap of the stop-gradient ratio (official clamped class: 3.0)"),
            "weighting": ("token", _one_of(*losses.WEIGHTINGS), "token (official) | batch"),
            "gt_detach": (False, _one_of(True, False), "official LLaMA code's sg(q_y) subtraction (off by default)"),
        },
        needs_cost=True,
        logged=("demd", "weight"),
        token_wise=lambda params: params.get("weighting", "token") == "token",  # batch: the ratio of batch means
    ),
}
ALIASES = {"emo1": ("emo", {"variant": "emo1"}), "emo2": ("emo", {"variant": "emo2"}), "demd": ("emo", {"variant": "demd"})}


@dataclass
class Objective:
    """A loss bound to its parameters (and cost embedding): `objective(logits, labels) -> LossOutput`."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    cost: CostEmbedding | Tensor | None = None

    @property
    def entry(self) -> Entry:
        return OBJECTIVES[self.name]

    @property
    def needs_cost(self) -> bool:
        return self.entry.needs_cost

    @property
    def logged(self) -> tuple[str, ...]:
        return self.entry.logged

    @property
    def token_wise(self) -> bool:
        return self.entry.token_wise(self.params)

    def combine(self, ce: Tensor, demd: Tensor | None, q_y: Tensor | None, mean) -> losses.Combined:
        """This objective's rule on per-token terms, `mean` being the caller's token mean (see losses.py)."""
        return self.entry.rule(ce, demd, q_y, mean, **self.params)

    def __call__(self, logits: Tensor, labels: Tensor, num_items_in_batch=None) -> LossOutput:
        extra = {"cost": self.cost} if self.needs_cost else {}
        return self.entry.plain(logits, labels, num_items_in_batch=num_items_in_batch, **extra, **self.params)


def needs_cost(name: str) -> bool:
    """Whether objective `name` (an alias too) needs a cost embedding."""
    return OBJECTIVES[resolve(name)[0]].needs_cost


def resolve(name: str, params: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """Canonical name and full, checked parameters (defaults filled in)."""
    params = dict(params or {})
    if name in ALIASES:
        name, fixed = ALIASES[name]
        if "variant" in params and params["variant"] != fixed["variant"]:
            raise EmotuneError(f"objective {name!r} alias fixes variant={fixed['variant']!r}, got variant={params['variant']!r}")
        params.update(fixed)
    if name not in OBJECTIVES:
        raise EmotuneError(f"unknown objective {name!r}; choose one of {sorted([*OBJECTIVES, *ALIASES])}")
    spec = OBJECTIVES[name].params
    unknown = sorted(set(params) - set(spec))
    if unknown:
        raise EmotuneError(f"objective {name!r} has no parameter {unknown[0]!r}; its parameters: {sorted(spec) or 'none'}")
    full = {}
    for key, (default, check, description) in spec.items():
        value = params.get(key, default)
        if not check(value):
            raise EmotuneError(f"objective {name!r}: {key}={value!r} is invalid ({description})")
        full[key] = value
    return name, full


def build_objective(name: str, params: dict[str, Any] | None = None, cost: CostEmbedding | Tensor | None = None) -> Objective:
    name, full = resolve(name, params)
    if OBJECTIVES[name].needs_cost and cost is None:
        raise EmotuneError(f"objective {name!r} needs a cost embedding (build one with CostEmbedding.frozen(model))")
    return Objective(name, full, cost if OBJECTIVES[name].needs_cost else None)


def describe() -> str:
    """A human-readable list of the objectives and their parameters (for `emotune losses`)."""
    lines = []
    for name, entry in OBJECTIVES.items():
        lines.append(f"{name}{'  (needs a cost embedding)' if entry.needs_cost else ''}: {entry.plain.__doc__.strip().splitlines()[0]}")
        for key, (default, _, description) in entry.params.items():
            lines.append(f"    {key} = {default!r}    {description}")
    lines.append("aliases: " + ", ".join(f"{a} = {n}(variant={p['variant']!r})" for a, (n, p) in ALIASES.items()))
    return "\n".join(lines)
