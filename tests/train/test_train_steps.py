"""The recipe's small steps on their own: the step / window sums, the schedule length, parameter groups,
the per-step divisor, the best-checkpoint rule (the whole recipe runs in test_train.py)."""

import math
from types import SimpleNamespace

import pytest
import torch

from emotune.objectives.common import LossOutput
from emotune.train.metrics import LogWindow, StepSums
from emotune.train.optim import lr_lambda, param_groups, schedule_length
from emotune.train.recipe import step_divisor
from emotune.train.resume import better


def _out(loss, ce, n, demd=None, weight=None):
    t = lambda v: None if v is None else torch.tensor(v)  # noqa: E731
    return LossOutput(loss=torch.tensor(loss), ce=t(ce), n_tokens=torch.tensor(n), demd=t(demd), weight=t(weight))


def test_step_sums_weight_each_micro_batch_by_its_targets():
    s = StepSums()
    s.add(_out(1.0, 2.0, 3, demd=0.5, weight=4.0))
    s.add(_out(0.25, 1.0, 1))  # no demd / weight: adds nothing to them
    assert (s.loss, s.ce, s.demd, s.weight, s.n) == (1.25, 7.0, 1.5, 12.0, 4.0)
    doubled = s.all_reduced(lambda values: [2 * v for v in values])  # a 2-rank all-reduce of equal ranks
    assert (doubled.loss, doubled.ce, doubled.demd, doubled.weight, doubled.n) == (2.5, 14.0, 3.0, 24.0, 8.0)


def test_log_window_means_and_objective_diagnostics():
    w = LogWindow()
    w.add(3.0, StepSums(loss=6.0, ce=8.0, demd=2.0, weight=4.0, n=4.0), 10)
    w.add(1.0, StepSums(loss=2.0, ce=4.0, demd=2.0, weight=0.0, n=4.0), 6)
    rec = w.record(step=2, epoch=0.5, lr=1e-3, grad_norm=torch.tensor(2.0), tokens_seen=16, logged=("demd", "weight"))
    assert [k for k in rec] == ["step", "epoch", "loss", "ce", "ppl", "lr", "grad_norm", "tokens_seen", "tokens_per_s",
                                "demd", "weight"]
    assert rec["loss"] == 2.0 and rec["ce"] == 1.5 and rec["demd"] == 0.5 and rec["weight"] == 0.5
    assert rec["ppl"] == pytest.approx(math.exp(1.5)) and rec["grad_norm"] == 2.0 and rec["tokens_per_s"] > 0
    assert "demd" not in w.record(2, 0.5, 1e-3, None, 16, logged=("weight",))
    w.reset()
    w.add(2.0, StepSums(loss=2.0, n=0.0), 0)  # a window without targets: per-token means divide by 1, not 0
    assert w.record(3, 0.5, 1e-3, None, 16)["ce"] == 0.0 and w.steps == 1.0


def test_schedule_length_and_warmup_first_step_learns():
    cfg = SimpleNamespace(max_steps=0, num_train_epochs=1.5, warmup_steps=0, warmup_ratio=0.1)
    assert schedule_length(cfg, 7) == (11, 2)  # ceil(1.5 * 7), ceil(0.1 * 11)
    assert schedule_length(SimpleNamespace(max_steps=5, num_train_epochs=1.5, warmup_steps=3, warmup_ratio=0.1), 7) == (5, 3)
    f = lr_lambda(10, 4, "linear")
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]  # (step+1)/warmup: never 0 at the first step
    assert f(10) == 0.0


def test_param_groups_exclude_biases_and_norms_from_decay():
    model = torch.nn.Module()
    model.proj, model.norm, model.head = torch.nn.Linear(2, 2), torch.nn.LayerNorm(2), torch.nn.Linear(2, 2, bias=False)
    model.proj.weight.requires_grad_(False)  # frozen: in no group
    decayed, plain = param_groups(model, 0.1)
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert [id(p) for p in decayed["params"]] == [id(model.head.weight)]
    assert [id(p) for p in plain["params"]] == [id(model.proj.bias), id(model.norm.weight), id(model.norm.bias)]
    only = param_groups(torch.nn.Linear(2, 2, bias=False), 0.1)
    assert len(only) == 1 and only[0]["weight_decay"] == 0.1  # an empty group is dropped


def test_step_divisor_counts_shifted_targets_over_ranks_and_accumulation():
    micro = [{"labels": torch.tensor([[5, 6, -100, 7]]), "attention_mask": torch.tensor([[1, 1, 1, 0]])},
             {"labels": torch.tensor([[1, -100, -100, -100]]), "attention_mask": torch.tensor([[1, 1, 0, 0]])}]
    divisor, n_inputs = step_divisor(micro, world=1, accum=2)  # no process group: the all-reduce is the identity
    assert divisor == 2 / 2 and n_inputs == 5  # targets: labels[:, 1:] != -100 -> 6, 7 (the first label is no target)
    micro[1]["labels"][:] = -100
    micro[0]["labels"][:] = -100
    assert step_divisor(micro, world=2, accum=2)[0] == 1 / 4  # no target at all: the count is clamped to 1


def test_best_checkpoint_rule():
    assert better(1.0, None, False) and not better(float("nan"), None, False) and not better(None, None, True)
    best = {"value": 2.0}
    assert better(1.0, best, False) and not better(3.0, best, False)
    assert better(3.0, best, True) and not better(2.0, best, True)
