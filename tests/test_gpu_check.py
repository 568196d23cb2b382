"""benchmarks/gpu_check.py --smoke: the GPU check's code paths at tiny sizes on the CPU, so the script
cannot rot between the rare runs on a lent GPU. Runs it as a user would (its own process) and reads the
one JSON line it ends with."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_runs_every_section_on_cpu(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"),
               PYTHONPATH=str(REPO))
    env.pop("DS_ACCELERATOR", None)
    # a user's shell, not this test process's: an in-process one-rank group of another test in this worker
    # may still hold its MASTER_PORT, and the script's own group must pick a free one
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--smoke"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    fig = json.loads(proc.stdout.strip().splitlines()[-1])
    assert fig["smoke"] and fig["device"] == "cpu"
    for section in ("numerics", "loss", "train", "icl"):
        assert f"{section}_section_s" in fig, section
    assert set(fig["numerics_max_rel_err"]) == {"bf16_plain", "bf16_fused", "fp16_plain", "fp16_fused"}
    assert all(v < 0.05 for v in fig["numerics_max_rel_err"].values())  # finite, within low-precision tolerance
    assert fig["numerics_fused_not_worse"]
    assert set(fig["train"]) == {"mle_plain", "mle_fused", "emo_plain", "emo_fused"} and fig["train_loss_ok"]
    # plain and fused train the same model: same first loss, same trajectory up to bf16 rounding
    t = fig["train"]
    assert t["mle_plain"]["loss_first"] == t["mle_fused"]["loss_first"] == t["emo_fused"]["loss_first"]
    assert abs(t["emo_plain"]["loss_last"] - t["emo_fused"]["loss_last"]) < 1e-2
    assert fig["icl_identical_predictions"] and fig["sampling_tokens_per_s"] > 0
