"""The registry owns each objective: a new one is one Entry (plain loss + combine rule), and both the plain and
the fused path, the training log's diagnostics and the cost policy follow from it with no other change."""

import re
from pathlib import Path

import pytest
import torch

from emotune.objectives import build_objective, mle
from emotune.objectives.common import LossOutput, token_mean, token_terms
from emotune.objectives.fused import fused_loss
from emotune.objectives.losses import Combined, mle_rule
from emotune.objectives.registry import OBJECTIVES, Entry, needs_cost

PACKAGE = Path(__file__).resolve().parents[2] / "emotune"


def _twice_rule(ce, demd, q_y, mean, scale=2.0):
    w = torch.full_like(ce, scale)
    return Combined(mean(w * ce), w)


def _twice(logits, labels, scale=2.0, num_items_in_batch=None, ignore_index=-100):
    """A toy objective: scale x MLE."""
    ce, _, _ = token_terms(logits, labels, ignore_index=ignore_index)
    out = _twice_rule(ce, None, None, lambda t: token_mean(t, num_items_in_batch), scale)
    return LossOutput(out.loss, token_mean(ce.detach()), torch.tensor(ce.numel()), weight=token_mean(out.weight))


def test_a_new_objective_is_one_entry(monkeypatch):
    check = lambda v: isinstance(v, float) and v > 0  # noqa: E731
    monkeypatch.setitem(OBJECTIVES, "twice", Entry(_twice, _twice_rule, {"scale": (2.0, check, "factor")}, logged=("weight",)))
    obj = build_objective("twice", {"scale": 3.0})
    assert obj.logged == ("weight",) and obj.token_wise and not obj.needs_cost and not needs_cost("twice")
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 5, 4, dtype=torch.float64, generator=g)
    w = torch.randn(7, 4, dtype=torch.float64, generator=g, requires_grad=True)
    labels = torch.randint(0, 7, (2, 5), generator=g)
    labels[0, 2] = -100
    plain = obj(h @ w.T, labels)
    (gp,) = torch.autograd.grad(plain.loss, w)
    ref = mle(h @ w.T, labels).loss
    assert torch.allclose(plain.loss, 3.0 * ref, rtol=1e-12, atol=0)
    fused = fused_loss(h, w, labels, obj, chunk_size=3)  # fused.py knows nothing of "twice": the entry's rule
    (gf,) = torch.autograd.grad(fused.loss, w)
    assert torch.allclose(fused.loss, plain.loss, rtol=1e-12, atol=0) and torch.allclose(gf, gp, rtol=1e-10, atol=1e-14)
    assert float(fused.weight) == pytest.approx(3.0) and fused.demd is None


def test_every_entry_says_what_it_logs_and_needs():
    for name, entry in OBJECTIVES.items():
        assert set(entry.logged) <= {"demd", "weight"}, name
        assert entry.plain.__doc__ and callable(entry.rule), name
        assert entry.needs_cost == ("demd" in entry.logged), name  # DEMD is the only term that needs the cost
    assert mle_rule is OBJECTIVES["mle"].rule
    assert build_objective("emo", {"weighting": "batch"}, cost=torch.eye(3)).token_wise is False
    assert needs_cost("emo2") and not needs_cost("mixce")


def test_no_objective_name_branches_outside_the_registry():
    # `name == "emo"`, `objective.name != 'mle'`, `name in ("tailr", ...)`: what fused.py, train.py, hf.py once had
    pattern = re.compile(r"""\bname\s*(==|!=|in|not in)\s*\(?\s*["'](mle|emo|emo1|emo2|demd|tailr|mixce)["']""")
    offenders = []
    for path in [*PACKAGE.joinpath("objectives").glob("*.py"), *PACKAGE.joinpath("train").glob("*.py")]:
        if path.name == "registry.py":
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(PACKAGE)}:{i}: {line.strip()}")
    assert not offenders, offenders
