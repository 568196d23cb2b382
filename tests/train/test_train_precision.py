"""The training stage in mixed precision on real DeepSpeed ZeRO-3 (CPU, gloo).

- bf16 on 2 ranks end to end (DeepSpeed's CPU accelerator supports bf16): losses within bf16 tolerance of
  the same run in fp32, the frozen cost embedding an exact copy of the bf16 head it was taken from (and
  untouched by training), the export in the configured dtype.
- fp16 with dynamic loss scaling: DeepSpeed's CPU accelerator refuses fp16 where the CPU has no fp16
  kernels (`is_fp16_supported()` is False here), so the one capability check is switched off and
  everything else is DeepSpeed's real ZeRO-3 fp16 optimizer and loss scaler. An initial scale of 2^24
  overflows on purpose: those steps must be skipped by DeepSpeed, logged by us, retried on the same
  data and not counted as progress (step, tokens, LR schedule).

The bf16 test launches this file under `torchrun --nproc_per_node 2` (worker: `main()`); the fp16 test runs
one rank in the test's own process (`fp16_run()`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/: the shared fixture modules

from support import free_port  # noqa: E402

from emotune.resources import shipped  # noqa: E402  (after the path set-up: this file also runs as a script)


def _fp16_ds_config(path: Path, initial_scale_power: int) -> Path:
    ds = json.loads(shipped("deepspeed/zero3-fp16.json").read_text())
    ds["fp16"]["initial_scale_power"] = initial_scale_power
    ds["fp16"]["hysteresis"] = 1
    ds["optimizer"]["params"]["torch_adam"] = True  # no CPU-Adam JIT build in a unit test
    ds["zero_optimization"].update(overlap_comm=False, stage3_param_persistence_threshold=0)
    for key in ("reduce_bucket_size", "stage3_prefetch_bucket_size"):
        ds["zero_optimization"].pop(key)
    path.write_text(json.dumps(ds))
    return path


def test_fp16_overflow_steps_are_skipped_logged_and_retried(tmp_path, monkeypatch):
    # in this process, on one gloo rank: single_rank tears DeepSpeed's process groups down afterwards
    from deepspeed.accelerator import get_accelerator
    from train_builders import single_rank

    # the CPU accelerator's fp16 capability check switched off, nothing else
    monkeypatch.setattr(type(get_accelerator()), "is_fp16_supported", lambda self: True)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    with single_rank():
        res = fp16_run(tmp_path)
    log = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    skips = [r for r in log if r.get("skipped_step")]
    steps = [r for r in log if "loss" in r]
    assert len(skips) >= 3, log  # 2^24 overflows: DeepSpeed halves the scale each time
    assert all(r["step"] == 0 for r in skips)  # before the first applied step: no progress counted
    scales = [r["loss_scale"] for r in skips]
    assert scales == [2.0 ** 23 / 2 ** i for i in range(len(skips))], scales
    assert [r["step"] for r in steps] == [1, 2, 3] and res["step"] == 3
    # the LR schedule (linear decay over 3 steps, no warmup) did not advance on the skipped steps
    assert [r["lr"] for r in steps] == pytest.approx([3e-3, 2e-3, 1e-3])
    assert steps[0]["tokens_seen"] * 3 == steps[-1]["tokens_seen"] == res["tokens_seen"]  # skips carried no tokens
    assert all(r["loss"] == r["loss"] and abs(r["loss"]) < 1e3 for r in steps)
    manifest = json.loads((tmp_path / "out" / "checkpoint-3" / "manifest.json").read_text())
    assert manifest["dtype"] == "float16"


def fp16_run(tmp: Path) -> dict:
    """One rank, fp16 ZeRO-3 with an initial loss scale of 2^24: the run's step and tokens seen."""
    from train_builders import run_config, tiny_setup

    from emotune.train.config import validate
    from emotune.train.recipe import run

    setup = tiny_setup(tmp / "setup")
    ds = _fp16_ds_config(tmp / "ds.json", initial_scale_power=24)
    cfg = validate(run_config(setup, tmp / "out", fp16=True, deepspeed=str(ds), max_steps=3, save_steps=3,
                              warmup_steps=0, lr_scheduler_type="linear", model__torch_dtype="float16",
                              data__validation_files=None))
    res = run(cfg)
    return {"step": res.step, "tokens_seen": res.tokens_seen}


@pytest.mark.e2e
def test_bf16_two_ranks_matches_fp32_end_to_end(tmp_path):
    out = tmp_path / "result.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"), OMP_NUM_THREADS="1")
    env.pop("DS_ACCELERATOR", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), __file__, str(tmp_path), str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    res = json.loads(out.read_text())
    fp32, bf16 = res["float32"], res["bfloat16"]
    assert fp32["world"] == bf16["world"] == 2
    assert sorted(fp32["losses"]) == sorted(bf16["losses"]) and len(bf16["losses"]) == 4
    for step, loss in fp32["losses"].items():
        # bf16 weights and activations: ~2^-8 relative per operation; the loss agrees to ~1%
        assert abs(bf16["losses"][step] - loss) <= 2e-2 * abs(loss), (step, loss, bf16["losses"][step])
    assert bf16["losses"]["4"] < bf16["losses"]["1"]  # and it trains
    for run in (fp32, bf16):
        assert run["cost_exact"]  # after training: still normalize_rows(the initial head, in the run's dtype)
    assert bf16["export_dtypes"] == ["torch.bfloat16"] and bf16["manifest_dtype"] == "bfloat16"
    assert fp32["export_dtypes"] == ["torch.float32"]
    assert bf16["export_f32_dtypes"] == ["torch.float32"]  # export_dtype: float32 overrides the model's dtype


def main(tmp: str, out_path: str) -> None:
    """Worker (2 ranks): the same tiny run in fp32 and in bf16 through the training stage's `run`."""
    import torch
    import torch.distributed as dist
    from safetensors import safe_open
    from train_builders import run_config, tiny_setup

    from emotune.objectives.cost import normalize_rows
    from emotune.train.config import validate
    from emotune.train.distributed import setup_distributed
    from emotune.train.recipe import run

    tmp = Path(tmp)
    rank, _ = setup_distributed()
    if rank == 0:
        tiny_setup(tmp / "setup")
    dist.barrier()
    setup = {"model": str(tmp / "setup" / "model"), "train": str(tmp / "setup" / "train.txt"),
             "valid": str(tmp / "setup" / "valid.txt")}
    result = {}
    for dtype in ("float32", "bfloat16"):
        for export in ("auto", "float32") if dtype == "bfloat16" else ("auto",):
            name = dtype if export == "auto" else dtype + "_export_f32"
            cfg = validate(run_config(setup, tmp / name, bf16=dtype == "bfloat16", model__torch_dtype=dtype,
                                      max_steps=4, save_steps=4, export_dtype=export, data__validation_files=None))
            res = run(cfg)
            if rank != 0:
                continue
            from transformers import AutoModelForCausalLM

            base = AutoModelForCausalLM.from_pretrained(setup["model"], dtype=getattr(torch, dtype))
            want = normalize_rows(base.lm_head.weight)
            got = res.cost.matrix()
            ckpt = tmp / name / "checkpoint-4"
            with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
                dtypes = sorted({str(f.get_tensor(k).dtype) for k in f.keys()})
            entry = {"world": dist.get_world_size(), "losses": {str(k): v for k, v in res.losses.items()},
                     "cost_exact": bool(torch.equal(got, want)),
                     "manifest_dtype": json.loads((ckpt / "manifest.json").read_text())["dtype"]}
            if export == "auto":
                result[dtype] = {**entry, "export_dtypes": dtypes}
            else:
                result["bfloat16"]["export_f32_dtypes"] = dtypes
    if rank == 0:
        Path(out_path).write_text(json.dumps(result))
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
