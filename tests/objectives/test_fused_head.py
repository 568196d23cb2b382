"""fused_causal_lm_loss on tiny HF causal LMs against the plain path (full logits + objective):
untied and tied heads, a head with a bias, PEFT LoRA on the LM head, modules_to_save, the fallbacks,
and the training stage's loss_step. Gradients of every trainable parameter must agree."""

import warnings

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from emotune.objectives import CostEmbedding, build_objective
from emotune.train.fused_head import fused_causal_lm_loss, unfusable_reason
from emotune.train.loss_step import loss_step

V = 97


def llama(tied=False, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=tied)
    return LlamaForCausalLM(cfg)


def make_batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (2, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    labels = ids.clone()
    labels[0, :4] = -100
    labels[1, -3:] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def grads_of(model, fn):
    model.zero_grad(set_to_none=True)
    out = fn()
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def plain(model, batch, objective):
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return objective(model(**inputs, use_cache=False).logits, batch["labels"])


def assert_same(model, batch, objective, tol=2e-5):
    ref, g_ref = grads_of(model, lambda: plain(model, batch, objective))
    out, g_out = grads_of(model, lambda: fused_causal_lm_loss(model, batch, objective, chunk_size=5))
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-6)
    assert out.metrics().keys() == ref.metrics().keys()
    for key, value in ref.metrics().items():
        assert out.metrics()[key] == pytest.approx(value, rel=1e-5), key
    assert g_out.keys() == g_ref.keys() and g_ref
    for name, g in g_ref.items():
        err = float((g_out[name] - g).abs().max() / g.abs().max().clamp_min(1e-12))
        assert err < tol, (name, err)
    return out


@pytest.mark.parametrize("tied,name,params", [
    (False, "mle", {}), (False, "emo", {}), (True, "tailr", {}), (True, "emo", {"variant": "emo2", "weighting": "batch"}),
], ids=["untied-mle", "untied-emo1", "tied-tailr", "tied-emo2-batch"])
def test_llama_fused_equals_plain(tied, name, params):
    model = llama(tied)
    if tied:
        assert model.lm_head.weight is model.model.embed_tokens.weight
    objective = build_objective(name, params, CostEmbedding.frozen(model) if name == "emo" else None)
    assert_same(model, make_batch(), objective)
    # the head is a normal head again afterwards: logits, not a loss
    assert model(input_ids=make_batch()["input_ids"]).logits.shape == (2, 11, V)


def test_adaptive_cost_reads_the_live_head():
    model = llama()
    assert_same(model, make_batch(), build_objective("emo", {"variant": "emo2"}, CostEmbedding.adaptive(model)))


def test_head_with_bias_gpt2_tied():
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=32, resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg)
    model.lm_head.bias = torch.nn.Parameter(torch.randn(V) * 0.1)  # GPT-2 has none; exercise the bias path
    assert_same(model, make_batch(), build_objective("emo", {}, CostEmbedding.frozen(model)))


def _peft(model, **kw):
    import peft

    cfg = peft.LoraConfig(r=4, lora_alpha=8, **kw)
    pm = peft.get_peft_model(model, cfg)
    torch.manual_seed(3)
    for n, p in pm.named_parameters():  # lora_B starts at 0; make the adapters matter
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.3)
    return pm


def test_lora_on_lm_head():
    model = llama()
    objective = build_objective("emo", {}, CostEmbedding.frozen(model))
    pm = _peft(model, target_modules=["q_proj", "v_proj", "lm_head"], lora_dropout=0.0)
    assert unfusable_reason(pm) is None
    out = assert_same(pm, make_batch(), objective)
    assert int(out.n_tokens) == 14


def test_lora_modules_to_save_head():
    model = llama()
    objective = build_objective("emo", {}, CostEmbedding.frozen(model))
    pm = _peft(model, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"], lora_dropout=0.0)
    _, grads = grads_of(pm, lambda: fused_causal_lm_loss(pm, make_batch(), objective))
    assert any("modules_to_save" in n and "lm_head" in n for n in grads)
    assert_same(pm, make_batch(), objective)


def test_lora_dropout_on_head_falls_back_with_one_warning():
    model = llama()
    objective = build_objective("mle")
    pm = _peft(model, target_modules=["lm_head"], lora_dropout=0.1)
    pm.train()
    assert "lora_dropout" in unfusable_reason(pm)
    with pytest.warns(UserWarning, match="lora_dropout"):
        torch.manual_seed(7)
        out = fused_causal_lm_loss(pm, make_batch(), objective)
    torch.manual_seed(7)
    ref = plain(pm, make_batch(), objective)
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-6)
    pm.eval()  # dropout inactive: fusable again
    assert unfusable_reason(pm) is None


def test_logit_softcapping_model_falls_back():
    model = llama()
    model.config.final_logit_softcapping = 30.0
    assert "final_logit_softcapping" in unfusable_reason(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = fused_causal_lm_loss(model, make_batch(), build_objective("mle"))
    assert out.loss.item() == pytest.approx(plain(model, make_batch(), build_objective("mle")).loss.item(), rel=1e-6)


def test_through_loss_step_no_grad_and_num_items():
    model = llama()
    objective = build_objective("emo", {}, CostEmbedding.frozen(model))
    batch = dict(make_batch(), num_items_in_batch=torch.tensor(30))
    a = loss_step(model, batch, objective, fused=True)
    b = loss_step(model, batch, objective, fused=False)
    assert a.loss.item() == pytest.approx(b.loss.item(), rel=1e-6)
    model.eval()
    with torch.no_grad():
        c = loss_step(model, batch, objective, fused=True)
    assert not c.loss.requires_grad and c.loss.item() == pytest.approx(b.loss.item(), rel=1e-6)


def test_head_restored_after_an_error():
    model = llama()
    batch = make_batch()
    batch["labels"][0, 5] = V + 3
    with pytest.raises(ValueError, match="label ids"):
        fused_causal_lm_loss(model, batch, build_objective("mle"))
    assert "forward" not in model.lm_head.__dict__
    assert model(input_ids=batch["input_ids"]).logits.shape == (2, 11, V)
