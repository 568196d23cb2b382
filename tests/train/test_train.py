"""The training stage on real DeepSpeed ZeRO-3 (one in-process CPU rank, tiny LLaMA): export reloads with the
engine's logits, checkpoint layout + manifest, cost embedding, bit-identical resume, LoRA + instructions, errors."""

import glob
import json
import os
import shutil
import struct
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors import safe_open
from train_builders import losses_from_log, run_config, single_rank, tiny_setup

from emotune.cli import main as cli_main
from emotune.manifest import verify_checkpoint
from emotune.train import checkpoint as ckpt
from emotune.train.config import validate
from emotune.train.recipe import run


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage")
    setup = tiny_setup(root / "setup")
    # W&B as HF users set it up, offline: no network, the run's records in WANDB_DIR
    wandb_env = {"WANDB_MODE": "offline", "WANDB_DIR": str(root / "wandb"), "WANDB_PROJECT": "emotune-test",
                 "WANDB_SILENT": "true"}
    saved = {k: os.environ.get(k) for k in wandb_env}
    os.environ.update(wandb_env)
    (root / "wandb").mkdir()
    try:
        with single_rank():
            cfg = validate(run_config(setup, root / "full", save_steps=2, save_total_limit=2, run_name="tiny-emo",
                                      report_to=["jsonl", "tensorboard", "wandb"]))
            result = run(cfg)
            yield {"root": root, "setup": setup, "cfg": cfg, "result": result}
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def unit(w):
    return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-6)


def probe_batch(tok):
    return tok(["the old river bridge was built .", "north harbour winter light ."], return_tensors="pt", padding=True)


def test_export_reloads_and_gives_the_engine_logits(stage):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    res = stage["result"]
    out = stage["cfg"].output_dir
    assert res.step == 6 and [p.name for p in res.checkpoints] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    batch = probe_batch(res.tokenizer)
    res.engine.eval()
    with torch.no_grad():
        engine_logits = res.engine(**batch).logits
    model = AutoModelForCausalLM.from_pretrained(f"{out}/checkpoint-6", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(f"{out}/checkpoint-6")
    assert tok("the old river")["input_ids"] == res.tokenizer("the old river")["input_ids"]
    with torch.no_grad():
        hf_logits = model(**batch).logits
    assert torch.equal(engine_logits, hf_logits)  # fp32 ZeRO-3 weights, gathered exactly
    with safe_open(f"{out}/checkpoint-6/model.safetensors", "pt") as f:
        assert all(0 not in f.get_slice(k).get_shape() for k in f.keys())  # no [0] placeholders saved
    # training moved the weights
    base = AutoModelForCausalLM.from_pretrained(stage["setup"]["model"], dtype=torch.float32)
    assert not torch.equal(base.lm_head.weight, model.lm_head.weight)


def test_checkpoint_layout_manifest_and_retention(stage):
    out = stage["cfg"].output_dir
    complete = ckpt.complete_checkpoints(out)
    assert [p.name for p in complete] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    manifest = verify_checkpoint(complete[-1])
    assert manifest["step"] == 6 and manifest["world_size"] == 1 and manifest["format"] == "full"
    assert manifest["final"] is True and manifest["max_steps"] == 6 and verify_checkpoint(complete[0])["final"] is False
    assert manifest["tokens_seen"] == 6 * 4 * 32  # 6 steps x global batch 4 x block 32
    assert manifest["config_hash"] == stage["cfg"].config_hash()
    assert manifest["objective"]["name"] == "emo" and manifest["objective"]["params"]["variant"] == "emo1"
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(manifest["files"])
    assert (complete[-1] / "COMPLETE").read_text().strip() == "6"
    assert not list(complete[-1].parent.glob(".checkpoint-*"))  # no temp dirs left
    # only the last save_total_limit=2 resumable states are kept
    assert [p.name for p in ckpt.resumable_states(out)] == ["step-4", "step-6"]
    # a tampered file fails verification
    (complete[0] / "config.json").write_text("{}")
    with pytest.raises(Exception, match="does not match its manifest hash"):
        verify_checkpoint(complete[0])


def test_training_log_has_all_metrics(stage):
    rows = [json.loads(l) for l in (stage["root"] / "full" / "train_log.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "ce", "ppl", "demd", "weight", "lr", "grad_norm", "tokens_per_s", "tokens_seen"):
        assert all(r[key] is not None for r in train), key
    assert all(abs(r["loss"] - r["ce"]) < 1e-5 for r in train)  # EMO-1's value equals MLE's (docs/objectives.md)
    assert train[0]["lr"] == pytest.approx(3e-3) and train[-1]["lr"] < train[1]["lr"]  # warmup 1, linear decay
    evals = [r for r in rows if "eval_ppl" in r]
    assert [r["step"] for r in evals] == [2, 4, 6] and evals[-1]["eval_ppl"] < evals[0]["eval_ppl"] * 1.5


def test_tensorboard_events_written(stage):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(stage["root"] / "full" / "runs"))
    acc.Reload()
    assert {"loss", "ce", "demd", "weight", "lr", "eval_ppl"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3, 4, 5, 6]


def wandb_records(path: str):
    """The records of an offline W&B run file (`run-ID.wandb`), read with wandb's own protobuf messages.
    The file is a LevelDB-style log: a 7-byte header, then records (CRC32, length, type) in 32 KiB blocks."""
    from wandb.proto import wandb_internal_pb2

    raw, pos, buf = open(path, "rb").read(), 7, b""
    assert raw[:4] == b":W&B"
    while pos + 7 <= len(raw):
        left = 32768 - pos % 32768
        _crc, n, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if left < 7 or (n == 0 and kind == 0):  # block padding
            pos += left
            continue
        buf += raw[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # FULL or LAST
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            buf = b""
            yield rec


def test_wandb_offline_run_has_the_training_curves(stage):
    files = glob.glob(str(stage["root"] / "wandb" / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1, files
    history, run = {}, None
    for rec in wandb_records(files[0]):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run = rec.run
        elif kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
            history.setdefault(items["_step"], {}).update(items)
    assert run.display_name == "tiny-emo" and run.project == "emotune-test"
    assert json.loads(next(i.value_json for i in run.config.update if i.key == "objective"))["name"] == "emo"
    log = [json.loads(l) for l in (stage["root"] / "full" / "train_log.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in log if "loss" in r}
    evals = {r["step"]: r for r in log if "eval_ce" in r}
    assert sorted(history) == sorted(train)  # every logged step, at its training step
    for step, rec in train.items():
        for key in ("loss", "ce", "demd", "lr", "tokens_seen"):
            assert history[step]["train/" + key] == pytest.approx(rec[key], rel=1e-12), (step, key)
    for step, rec in evals.items():
        assert history[step]["eval/ce"] == pytest.approx(rec["eval_ce"], rel=1e-12)


def test_report_to_wandb_without_the_package_is_one_line(stage, tmp_path):
    """A wandb that cannot be imported (here: shadowed by one that raises ImportError) -> exit 2 naming report_to."""
    fake = tmp_path / "shadow" / "wandb"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'wandb'\")\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(run_config(stage["setup"], tmp_path / "out", report_to=["jsonl", "wandb"])))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "shadow"), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-m", "emotune.cli", "train", str(cfg)], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "report_to" in err[0] and "wandb" in err[0] and str(cfg) in err[0], err
    assert not (tmp_path / "out").exists()


def test_cost_embedding_is_full_base_head(stage):
    res = stage["result"]
    with safe_open(stage["setup"]["model"] + "/model.safetensors", "pt") as f:
        base = f.get_tensor("lm_head.weight")
    m = res.cost.matrix()
    assert m.shape == base.shape and torch.equal(m, unit(base))  # [V, H] of the base model, not the trained head


def test_resume_is_bit_identical(stage):
    root, setup = stage["root"], stage["setup"]
    full = root / "full"
    resumed = root / "resumed"
    (resumed / "resume").mkdir(parents=True)
    shutil.copytree(full / "resume" / "step-4", resumed / "resume" / "step-4")
    shutil.copy(full / "resume" / "ledger.json", resumed / "resume")  # the same run, killed after step 4
    cfg = validate(run_config(setup, resumed, save_steps=2, save_total_limit=2, resume="latest"))
    res = run(cfg)
    assert sorted(res.losses) == [5, 6]
    full_losses = losses_from_log(full / "train_log.jsonl")
    assert [res.losses[s] for s in (5, 6)] == [full_losses[5], full_losses[6]]
    assert (resumed / "checkpoint-6" / "model.safetensors").read_bytes() == (full / "checkpoint-6" / "model.safetensors").read_bytes()
    batch = probe_batch(res.tokenizer)
    stage["result"].engine.eval()
    res.engine.eval()
    with torch.no_grad():
        assert torch.equal(res.engine(**batch).logits, stage["result"].engine(**batch).logits)
    assert verify_checkpoint(resumed / "checkpoint-6")["tokens_seen"] == 6 * 4 * 32


def test_lora_instruction_run_exports_adapter_and_merged(stage):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    root, setup = stage["root"], stage["setup"]
    cfg = validate(run_config(setup, root / "lora", max_steps=3, save_steps=3, learning_rate=1e-2,
                              data={"format": "instruction", "train_files": [setup["alpaca"]], "max_length": 256,
                                    "validation_split_percentage": 10},
                              objective={"name": "tailr"}, lora={"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0}))
    res = run(cfg)
    out = root / "lora" / "checkpoint-3"
    manifest = verify_checkpoint(out)
    assert manifest["format"] == "lora" and "adapter_model.safetensors" in manifest["files"]
    assert "merged/model.safetensors" in manifest["files"]
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        assert any("lora_B" in k and f.get_tensor(k).abs().max() > 0 for k in f.keys())  # B moved off zero
    base = AutoModelForCausalLM.from_pretrained(setup["model"], dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(out)).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(out / "merged"), dtype=torch.float32).eval()
    batch = probe_batch(res.tokenizer)
    with torch.no_grad():
        a, b = peft_model(**batch).logits, merged(**batch).logits
        res.engine.eval()
        e = res.engine(**batch).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(e, a, rtol=1e-5, atol=1e-5)
    rows = [json.loads(l) for l in (root / "lora" / "train_log.jsonl").read_text().splitlines()]
    assert all("weight" in r for r in rows if "loss" in r)  # TaiLr logs its weight


def test_cli_errors_are_one_line(stage, tmp_path, capsys):
    setup = stage["setup"]
    from train_builders import make_tiny_llama, make_tokenizer

    other = tmp_path / "other"
    make_tiny_llama(other, make_tokenizer(tmp_path / "t2", vocab_size=300), hidden=16)
    cfg = run_config(setup, tmp_path / "out", objective={"name": "emo", "cost": "external", "cost_source": str(other)})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert cli_main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # another tokenizer (here also another size): refused at the preflight, before the head's rows are compared
    assert len(err) == 1 and err[0].startswith(f"emotune train: error: objective.cost_source ({other}): the cost "
                                               "source's tokenizer is not the student's (300 tokens, the student's")
    assert cli_main(["train", str(path), "model.name_or_path=/no/such/model"]) == 2
    assert "model.name_or_path: model directory /no/such/model not found" in capsys.readouterr().err
    import importlib.util

    if importlib.util.find_spec("emotune.train.fused_head") is None:  # until the fused head lands: a clear error
        assert cli_main(["train", str(path), "fused_loss=true"]) == 2
        assert "fused_loss=true needs emotune.train.fused_head" in capsys.readouterr().err


def test_resume_with_another_world_size_is_refused(stage):
    from emotune.errors import EmotuneError

    root, setup = stage["root"], stage["setup"]
    other = root / "other-world"
    shutil.copytree(root / "full" / "resume" / "step-4", other / "resume" / "step-4")
    (other / "resume" / "step-4" / ckpt.RESUMABLE).write_text(json.dumps({"step": 4, "world_size": 2}))
    with pytest.raises(EmotuneError, match="written by 2 ranks, this run has 1"):
        run(validate(run_config(setup, other, resume="latest", trust_resume_state=True)))


def test_bf16_run_exports_bf16_weights_with_the_engine_logits(stage):
    from transformers import AutoModelForCausalLM

    root, setup = stage["root"], stage["setup"]
    cfg = validate(run_config(setup, root / "bf16", max_steps=2, save_steps=2, bf16=True,
                              model={"name_or_path": setup["model"], "torch_dtype": "auto"}))
    res = run(cfg)
    out = root / "bf16" / "checkpoint-2"
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.bfloat16).eval()
    batch = probe_batch(res.tokenizer)
    res.engine.eval()
    with torch.no_grad():
        torch.testing.assert_close(res.engine(**batch).logits, model(**batch).logits, rtol=0, atol=0)
    assert res.cost.matrix().dtype == torch.float32  # the losses' math stays fp32


def copy_resume(src, dst):
    shutil.copytree(src / "resume", dst / "resume", ignore=shutil.ignore_patterns("latest", "*.py"))


def test_truncated_newest_state_falls_back_and_exports_again(stage, caplog):
    root, setup, full = stage["root"], stage["setup"], stage["root"] / "full"
    out = root / "fallback"
    copy_resume(full, out)  # step-4 and step-6, no exports: as if killed right after saving step 6's state
    shard = next((out / "resume" / "step-6").glob("*model_states.pt"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    caplog.set_level("INFO", logger="emotune")
    res = run(validate(run_config(setup, out, save_steps=2, save_total_limit=2, resume="latest")))
    notes = [r.getMessage() for r in caplog.records if "passing over" in r.getMessage()]
    assert len(notes) == 1 and "\n" not in notes[0] and "step-6" in notes[0] and "resuming from step-4" in notes[0]
    assert sorted(res.losses) == [5, 6]
    assert [p.name for p in res.reexported] == ["checkpoint-4"]  # its export was missing: written from step-4's state
    for step in (4, 6):
        assert (out / f"checkpoint-{step}" / "model.safetensors").read_bytes() == \
            (full / f"checkpoint-{step}" / "model.safetensors").read_bytes()
        verify_checkpoint(out / f"checkpoint-{step}")
    assert ckpt.read_ledger(out).keys() == {"step-4", "step-6"}


def test_state_this_run_did_not_write_needs_the_opt_in(stage, caplog):
    from emotune.errors import EmotuneError

    root, setup, full = stage["root"], stage["setup"], stage["root"] / "full"
    out = root / "foreign"
    with pytest.raises(EmotuneError, match="was not written by this run.*trust_resume_state=true"):
        run(validate(run_config(setup, out, resume=str(full / "resume" / "step-4"))))
    assert not (out / "config.yaml").exists() and not (out / "resume").exists()
    caplog.set_level("INFO", logger="emotune")
    res = run(validate(run_config(setup, out, save_steps=2, resume=str(full / "resume" / "step-4"), trust_resume_state=True)))
    assert any("trust_resume_state=true" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    assert "trust_resume_state" not in yaml.safe_load((out / "config.yaml").read_text())  # a one-time decision
    assert sorted(res.losses) == [5, 6]
    assert (out / "checkpoint-6" / "model.safetensors").read_bytes() == (full / "checkpoint-6" / "model.safetensors").read_bytes()


def test_bad_rerun_leaves_the_recorded_run_untouched(stage, tmp_path, capsys):
    setup, full = stage["setup"], stage["root"] / "full"
    before = {p: p.read_bytes() for p in [full / "config.yaml", full / "train_log.jsonl", full / "best.json",
                                           *full.glob("checkpoint-*/manifest.json"), *full.glob("resume/*/RESUMABLE")]}
    assert yaml.safe_load(before[full / "config.yaml"])["output_dir"] == str(full)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(run_config(setup, full, save_steps=2, save_total_limit=2)))
    (tmp_path / "not-a-model").mkdir()
    elsewhere = tmp_path / "elsewhere"
    copy_resume(full, elsewhere)
    (tmp_path / "empty.txt").write_text("")
    for bad in (["model.name_or_path=" + str(tmp_path / "not-a-model"), "learning_rate=1"],
                ["resume=" + str(elsewhere / "resume" / "step-4"), "learning_rate=1"],
                ["data.train_files=[" + str(tmp_path / "empty.txt") + "]", "learning_rate=1"]):
        capsys.readouterr()
        assert cli_main(["train", str(cfg), *bad]) == 2, bad  # (the one-line wording is tests/test_bad_inputs.py's)
        assert {p: p.read_bytes() for p in before} == before, bad


def test_best_checkpoint_is_recorded_in_the_run_and_each_manifest(stage):
    full = stage["root"] / "full"
    evals = {r["step"]: r["eval_ce"] for r in (json.loads(l) for l in (full / "train_log.jsonl").read_text().splitlines())
             if "eval_ce" in r}
    assert sorted(evals) == [2, 4, 6]
    for step in (2, 4, 6):  # each manifest: the best checkpoint up to and including itself
        so_far = min((s for s in evals if s <= step), key=lambda s: evals[s])
        best = verify_checkpoint(full / f"checkpoint-{step}")["best"] if step != 2 else \
            json.loads((full / "checkpoint-2" / "manifest.json").read_text())["best"]  # checkpoint-2 was tampered above
        assert best == {"step": so_far, "checkpoint": f"checkpoint-{so_far}", "metric": "eval_ce", "value": evals[so_far],
                        "greater_is_better": False}
    overall = min(evals, key=lambda s: evals[s])
    assert json.loads((full / "best.json").read_text())["step"] == overall == stage["result"].best["step"]


def test_report_labels_runs_by_the_objective_in_their_config_yaml(stage):
    from emotune.report.data import label_runs, load_run

    runs = [load_run(str(stage["root"] / "full"), None, None)]  # no result store yet: only config.yaml names it
    label_runs(runs)
    assert (runs[0].objective, runs[0].label) == ("emo", "EMO")  # not the folder name "full"
    assert runs[0].best["step"] == stage["result"].best["step"]
