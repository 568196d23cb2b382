"""Objectives selected by name + parameters: what run configs use.

    objective = build_objective("emo", {"variant": "emo2", "ratio_clamp": 3.0}, cost=CostEmbedding.frozen(model))
    out = objective(logits, labels)          # LossOutput
    out.loss.backward(); log(out.metrics())

A new objective is one `Entry` here (its plain loss and combine rule in losses.py) and its test: the plain
path, the fused path (fused.py), the training log and the HF hooks read everything from the entry.
Aliases `emo1`, `emo2` and `demd` are `emo` with that variant; `kd` is `kd_forward`. Parameters are checked
here, so a bad config fails before any model is loaded, with a message naming the key.

Targets (`target: onehot | teacher | smoothed`, docs/objectives.md, *Dense targets*): an entry lists the targets it
accepts; with a dense one its rule runs on (likelihood to P, generalised DEMD) instead of (CE, DEMD), the
likelihood being the entry's (`forward_kl`, or `reverse_kl` for `kd_reverse`). The target's own options
(temperature, top_k, epsilon, tau) are parameters like any other, never passed to the rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import Tensor

from emotune.errors import EmotuneError
from emotune.objectives import losses
from emotune.objectives.common import LossOutput
from emotune.objectives.cost import CostEmbedding
from emotune.objectives.dense import TARGETS, TargetSpec


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
    likelihood: str = "forward_kl"  # the likelihood term to a dense target (the one-hot target's is the CE)


def _positive_int_or_none(v) -> bool:
    return v is None or (isinstance(v, int) and not isinstance(v, bool) and v > 0)


def _target_params(default: str, kinds: tuple[str, ...]) -> dict:
    """The target options every dense-capable entry shares (checked together in `resolve`)."""
    return {
        "target": (default, _one_of(*kinds), " | ".join(kinds)),
        "temperature": (1.0, _in_range(0.0, float("inf"), lo_open=True), "teacher temperature T > 0: P = softmax(z_t / T)"),
        "top_k": (None, _positive_int_or_none, "keep the teacher's k most likely tokens, renormalised (null: all)"),
        "epsilon": (0.1, _in_range(0.0, 1.0), "smoothed target: mass ε in [0, 1] moved to tokens near the label"),
        "tau": (0.1, _in_range(0.0, float("inf"), lo_open=True), "smoothed target: softmax(-C[y] / τ), τ > 0"),
    }


TARGET_KEYS = tuple(_target_params("onehot", TARGETS))


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
            **_target_params("onehot", TARGETS),
        },
        needs_cost=True,
        logged=("demd", "weight"),
        token_wise=lambda params: params.get("weighting", "token") == "token",  # batch: the ratio of batch means
    ),
    "kd_forward": Entry(losses.kd_forward, losses.kd_rule, _target_params("teacher", TARGETS[1:])),
    "kd_reverse": Entry(losses.kd_reverse, losses.kd_rule, _target_params("teacher", TARGETS[1:]), likelihood="reverse_kl"),
}
ALIASES = {"emo1": ("emo", {"variant": "emo1"}), "emo2": ("emo", {"variant": "emo2"}), "demd": ("emo", {"variant": "demd"}),
           "kd": ("kd_forward", {})}


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
        """EMO's DEMD needs the cost; so does a smoothed target (its P is a softmax of -C[y])."""
        return self.entry.needs_cost or self.params.get("target") == "smoothed"

    @property
    def target(self) -> TargetSpec:
        return TargetSpec.from_params(self.params)

    @property
    def dense(self) -> bool:
        return self.target.dense

    @property
    def needs_teacher(self) -> bool:
        return self.params.get("target") == "teacher"

    @property
    def uses_demd(self) -> bool:
        return self.entry.needs_cost

    @property
    def rule_params(self) -> dict[str, Any]:
        return {k: v for k, v in self.params.items() if k not in TARGET_KEYS}

    @property
    def logged(self) -> tuple[str, ...]:
        return self.entry.logged

    @property
    def token_wise(self) -> bool:
        return self.entry.token_wise(self.params)

    def combine(self, ce: Tensor, demd: Tensor | None, q_y: Tensor | None, mean) -> losses.Combined:
        """This objective's rule on per-token terms, `mean` being the caller's token mean (see losses.py). For a
        dense target `ce` is the likelihood term to P and `demd` the generalised DEMD."""
        return self.entry.rule(ce, demd, q_y, mean, **self.rule_params)

    def __call__(self, logits: Tensor, labels: Tensor, num_items_in_batch=None, teacher_logits: Tensor | None = None) -> LossOutput:
        if self.dense:
            return losses.dense_plain(self.entry.rule, self.entry.likelihood, self.uses_demd, logits, labels, self.target,
                                      teacher_logits, self.cost, num_items_in_batch, **self.rule_params)
        extra = {"cost": self.cost} if self.needs_cost else {}
        return self.entry.plain(logits, labels, num_items_in_batch=num_items_in_batch, **extra, **self.rule_params)


def needs_cost(name: str, params: dict[str, Any] | None = None) -> bool:
    """Whether objective `name` (an alias too) with these parameters needs a cost embedding."""
    name, full = resolve(name, params)
    return Objective(name, full).needs_cost


def resolve(name: str, params: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """Canonical name and full, checked parameters (defaults filled in)."""
    params = dict(params or {})
    if name in ALIASES:
        name, fixed = ALIASES[name]
        for key, value in fixed.items():
            if key in params and params[key] != value:
                raise EmotuneError(f"objective {name!r} alias fixes {key}={value!r}, got {key}={params[key]!r}")
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
    return name, _check_target(name, params, full)


_TARGET_OPTIONS = {"onehot": (), "teacher": ("temperature", "top_k"), "smoothed": ("epsilon", "tau")}


def _check_target(name: str, given: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Keep only the target options of the chosen target (none for one-hot, so its parameters are what they
    always were); an option of another target, given explicitly, is an error rather than silently unused."""
    if "target" not in params:
        return params
    target = params["target"]
    for key in TARGET_KEYS[1:]:
        if key in given and key not in _TARGET_OPTIONS[target]:
            raise EmotuneError(f"objective {name!r}: {key} is an option of target "
                               f"{[t for t, keys in _TARGET_OPTIONS.items() if key in keys][0]!r}, not of target={target!r}")
    keep = set(_TARGET_OPTIONS[target]) | ({"target"} if target != "onehot" else set())
    params = {k: v for k, v in params.items() if k not in TARGET_KEYS or k in keep}
    if target != "onehot" and params.get("gt_detach"):
        raise EmotuneError(f"objective {name!r}: gt_detach=true is for the one-hot target only (target={target!r})")
    if OBJECTIVES[name].likelihood == "reverse_kl" and target == "teacher" and params.get("top_k") is not None:
        raise EmotuneError(f"objective {name!r}: top_k={params['top_k']!r} gives p = 0 outside the top k, where the "
                           "reverse KL is infinite; set top_k: null")
    return params


def build_objective(name: str, params: dict[str, Any] | None = None, cost: CostEmbedding | Tensor | None = None) -> Objective:
    name, full = resolve(name, params)
    if OBJECTIVES[name].needs_cost and cost is None:
        raise EmotuneError(f"objective {name!r} needs a cost embedding (build one with CostEmbedding.frozen(model))")
    if not OBJECTIVES[name].needs_cost and full.get("target") == "smoothed" and cost is None:
        raise EmotuneError(f"objective {name!r} with target 'smoothed' needs a cost embedding (its P is softmax(-C[y]/τ))")
    objective = Objective(name, full, cost)
    if not objective.needs_cost:
        objective.cost = None
    return objective


def describe() -> str:
    """A human-readable list of the objectives and their parameters (for `emotune losses`)."""
    lines = []
    for name, entry in OBJECTIVES.items():
        lines.append(f"{name}{'  (needs a cost embedding)' if entry.needs_cost else ''}: {entry.plain.__doc__.strip().splitlines()[0]}")
        for key, (default, _, description) in entry.params.items():
            lines.append(f"    {key} = {default!r}    {description}")
    lines.append("aliases: " + ", ".join(f"{a} = {n}({', '.join(f'{k}={v!r}' for k, v in p.items())})"
                                         for a, (n, p) in ALIASES.items()))
    return "\n".join(lines)
