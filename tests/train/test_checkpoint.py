"""Checkpoint helpers: LoRA merge against peft's own, completion markers, resume lookup, state-dict gathering."""

import json

import pytest
import torch
from torch import nn

from emotune.errors import EmotuneError
from emotune.manifest import verify_checkpoint
from emotune.train import checkpoint as ckpt


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
    assert verify_checkpoint(tmp_path / "checkpoint-10")["step"] == 10
    with pytest.raises(EmotuneError, match="incomplete"):
        verify_checkpoint(tmp_path / "checkpoint-200")


def make_state(run, step, record=True, payload=b"shard"):
    """A resume state as DeepSpeed lays it out (two shard files), recorded by the real save-time code."""
    d = run / "resume" / f"step-{step}"
    d.mkdir(parents=True)
    (d / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(payload + bytes([step]) * 64)
    (d / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"optim" + bytes([step]) * 64)
    if record:
        ckpt.record_state(run, d, step, 1, rank=0)
    return d


def test_resume_lookup(tmp_path):
    assert ckpt.plan_resume(tmp_path, "latest", 0) == (None, [], None)  # a fresh run starts from scratch
    assert ckpt.plan_resume(tmp_path, None, 0) == (None, [], None)
    for step in (2, 4):
        make_state(tmp_path, step)
    (tmp_path / "resume" / "step-6").mkdir()  # step 6 was killed inside DeepSpeed's save: no marker
    state, reexport, note = ckpt.plan_resume(tmp_path, "latest", 0)
    assert state.name == "step-4" and note is None
    assert [p.name for p in reexport] == ["step-2", "step-4"]  # neither was exported yet
    make_ckpt(tmp_path, 2)
    assert [p.name for p in ckpt.plan_resume(tmp_path, "latest", 0)[1]] == ["step-4"]
    assert ckpt.plan_resume(tmp_path, str(tmp_path / "resume" / "step-2"), 0)[0].name == "step-2"
    assert ckpt.plan_resume(tmp_path, str(tmp_path), 0)[0].name == "step-4"  # the run directory: its newest state
    with pytest.raises(EmotuneError, match="not a complete resumable state"):
        ckpt.plan_resume(tmp_path, str(tmp_path / "resume" / "step-6"), 0)


def test_truncated_newest_state_falls_back_with_one_line(tmp_path):
    make_state(tmp_path, 2)
    newest = make_state(tmp_path, 4)
    shard = newest / "zero_pp_rank_0_mp_rank_00_model_states.pt"
    shard.write_bytes(shard.read_bytes()[:10])  # RESUMABLE present, shard cut
    state, _, note = ckpt.plan_resume(tmp_path, "latest", 0)
    assert state.name == "step-2"
    assert "\n" not in note and "step-4" in note and "resuming from step-2" in note
    assert "zero_pp_rank_0_mp_rank_00_model_states.pt does not match the hash recorded when it was saved" in note
    # nothing good left: one line, no OSError
    shard2 = tmp_path / "resume" / "step-2" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    shard2.unlink()
    with pytest.raises(EmotuneError, match="no resumable state in .* passes verification") as err:
        ckpt.plan_resume(tmp_path, "latest", 0)
    assert "\n" not in str(err.value)


def test_states_this_run_did_not_write_are_refused_unless_trusted(tmp_path):
    run, other = tmp_path / "run", tmp_path / "other"
    make_state(run, 2)
    foreign = make_state(other, 8)  # recorded in *other*'s ledger, not in run's
    with pytest.raises(EmotuneError, match="not written by this run.*trust_resume_state=true"):
        ckpt.plan_resume(run, str(foreign), 0)
    assert ckpt.plan_resume(run, str(foreign), 0, trust=True)[0] == foreign  # the explicit opt-in
    # copied into this run's resume folder, marker and all: still not in this run's ledger
    import shutil

    shutil.copytree(foreign, run / "resume" / "step-8")
    state, _, note = ckpt.plan_resume(run, "latest", 0)
    assert state.name == "step-2" and "step-8" in note and "not written by this run" in note
    # a swapped shard (same size, other bytes) is refused, even with its marker rewritten to match
    evil = run / "resume" / "step-2" / "zero_pp_rank_0_mp_rank_00_model_states.pt"
    evil.write_bytes(b"X" * len(evil.read_bytes()))
    marker = json.loads((run / "resume" / "step-2" / ckpt.RESUMABLE).read_text())
    marker["files"][evil.name] = ckpt.sha256_file(evil)
    (run / "resume" / "step-2" / ckpt.RESUMABLE).write_text(json.dumps(marker))
    assert "differs from the record" in ckpt.verify_state(run / "resume" / "step-2", run, 0)
    # a file added after the save
    (run / "resume" / "step-2" / ckpt.RESUMABLE).write_text(json.dumps(ckpt.read_ledger(run)["step-2"]))
    evil.unlink()
    assert "is missing" in ckpt.verify_state(run / "resume" / "step-2", run, 0)
    make_state(run, 3)
    (run / "resume" / "step-3" / "extra.pt").write_bytes(b"payload")
    assert "extra.pt was not there when the state was saved" in ckpt.verify_state(run / "resume" / "step-3", run, 0)


def test_clean_partial_removes_half_written_leftovers(tmp_path):
    make_state(tmp_path, 2)
    gone = make_state(tmp_path, 4)
    (gone / ckpt.RESUMABLE).unlink()  # killed between the ledger and the marker
    (tmp_path / ".checkpoint-4.tmp").mkdir()
    (tmp_path / ".config.yaml.abc123.tmp").write_text("half")
    removed = ckpt.clean_partial(tmp_path)
    assert {p.name for p in removed} == {"step-4", ".checkpoint-4.tmp", ".config.yaml.abc123.tmp"}
    assert sorted(ckpt.read_ledger(tmp_path)) == ["step-2"] and (tmp_path / "resume" / "step-2").is_dir()


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
