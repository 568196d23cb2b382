"""loss_step: the unfused path is the model's logits through the objective; the fused path is delegated."""


import torch
from transformers import LlamaConfig, LlamaForCausalLM

from emotune.objectives import CostEmbedding, build_objective
from emotune.train.loss_step import loss_step


def tiny():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1))


def batch():
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[0, :3] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def test_unfused_equals_objective_on_logits():
    model = tiny()
    objective = build_objective("emo", cost=CostEmbedding.frozen(model))
    b = batch()
    out = loss_step(model, b, objective, fused=False)
    ref = objective(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"])
    assert torch.equal(out.loss, ref.loss) and torch.equal(out.demd, ref.demd)
    assert int(out.n_tokens) == int((b["labels"][:, 1:] != -100).sum())


def test_num_items_in_batch_sets_the_divisor():
    model = tiny()
    objective = build_objective("mle")
    b = batch()
    n = int((b["labels"][:, 1:] != -100).sum())
    plain = loss_step(model, b, objective, fused=False).loss
    scaled = loss_step(model, dict(b, num_items_in_batch=torch.tensor(2.0 * n)), objective, fused=False).loss
    torch.testing.assert_close(scaled, plain / 2)
    assert "num_items_in_batch" not in b  # the caller's batch is not modified


def test_fused_branch_matches_unfused():
    model = tiny()
    objective = build_objective("emo", cost=CostEmbedding.frozen(model))
    b = batch()
    n = int((b["labels"][:, 1:] != -100).sum())
    for extra in ({}, {"num_items_in_batch": torch.tensor(float(n) * 1.5)}):
        ref = loss_step(model, dict(b, **extra), objective, fused=False)
        out = loss_step(model, dict(b, **extra), objective, fused=True)
        torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.ce, ref.ce, rtol=1e-5, atol=1e-6)
