"""Checkpoint helpers: LoRA merge against peft's own, completion markers, resume lookup, state-dict gathering."""

import json

import pytest
import torch
from torch import nn

from emotune.errors import EmotuneError
from emotune.pipeline import checkpoint as ckpt


def test_merge_lora_equals_peft_merge_and_unload():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=12, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # B starts at zero: make the update visible
    state = {k: v.detach().clone() for k, v in peft_model.named_parameters()}
    merged = ckpt.merge_lora(state, scaling=12 / 4)
    reference = peft_model.merge_and_unload().state_dict()
    assert set(merged) == set(reference)
    for key, value in merged.items():
        torch.testing.assert_close(value, reference[key], rtol=1e-6, atol=1e-6)
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"], state["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"])


def make_ckpt(root, step, complete=True, manifest=True):
    d = root / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    if manifest:
        (d / ckpt.MANIFEST).write_text(json.dumps({"step": step, "files": {"config.json": ckpt.sha256_file(d / "config.json")}}))
    if complete:
        (d / ckpt.COMPLETE).write_text(str(step))
    return d


def test_only_complete_checkpoints_are_listed_in_step_order(tmp_path):
    for step in (9, 10, 100):
        make_ckpt(tmp_path, step)
    make_ckpt(tmp_path, 200, complete=False)
    make_ckpt(tmp_path, 300, manifest=False)
    (tmp_path / ".checkpoint-400.tmp").mkdir()
    assert [p.name for p in ckpt.complete_checkpoints(tmp_path)] == ["checkpoint-9", "checkpoint-10", "checkpoint-100"]
    assert ckpt.verify_checkpoint(tmp_path / "checkpoint-10")["step"] == 10
    with pytest.raises(EmotuneError, match="incomplete"):
        ckpt.verify_checkpoint(tmp_path / "checkpoint-200")


def test_find_resume(tmp_path):
    assert ckpt.find_resume(tmp_path, "latest") is None  # a fresh run starts from scratch
    assert ckpt.find_resume(tmp_path, None) is None
    for step, done in ((2, True), (4, True), (6, False)):  # step 6 crashed mid-save: no marker
        d = tmp_path / "resume" / f"step-{step}"
        d.mkdir(parents=True)
        if done:
            (d / ckpt.RESUMABLE).write_text("{}")
    assert ckpt.find_resume(tmp_path, "latest").name == "step-4"
    assert ckpt.find_resume(tmp_path, str(tmp_path / "resume" / "step-2")).name == "step-2"
    assert ckpt.find_resume(tmp_path / "elsewhere", str(tmp_path)).name == "step-4"  # another run's directory
    with pytest.raises(EmotuneError, match="not a complete resumable state"):
        ckpt.find_resume(tmp_path, str(tmp_path / "resume" / "step-6"))


def test_gather_state_dict_plain_module_keeps_persistent_buffers():
    m = nn.BatchNorm1d(3)
    m.register_buffer("scratch", torch.ones(2), persistent=False)
    state = ckpt.gather_state_dict(m, torch.float64, rank=0)
    assert set(state) == {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
    assert state["weight"].dtype == torch.float64 and state["num_batches_tracked"].dtype == torch.long
    assert ckpt.gather_state_dict(m, None, rank=1) == {}


def test_atomic_write_leaves_no_temp(tmp_path):
    ckpt.atomic_write_text(tmp_path / "COMPLETE", "5\n")
    assert (tmp_path / "COMPLETE").read_text() == "5\n" and [p.name for p in tmp_path.iterdir()] == ["COMPLETE"]
