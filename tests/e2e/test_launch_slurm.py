"""`emotune launch --sbatch` scripts on a real one-node SLURM cluster (tests/slurm_cluster.py):
the training job runs the tiny config through srun + the deepspeed launcher (2 ranks, ZeRO-3), and the
evaluation job chained with --dependency=afterok runs after it and evaluates the checkpoint."""

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from slurm_cluster import slurm_cluster  # noqa: F401  (the fixture)
from sshd_fixture import free_port

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e  # the slurm_cluster fixture skips (laptop) or fails (CI) without slurm-wlm + munge


def test_sbatch_training_then_afterok_eval(slurm_cluster, tmp_path):  # noqa: F811
    run, slurm_dir, eval_dir = tmp_path / "run", tmp_path / "slurm", tmp_path / "eval"
    env = dict(slurm_cluster.env, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", PYTHONUNBUFFERED="1")
    eval_cmd = (f"emotune eval --model {run}/checkpoint-4 --tasks configs/eval/tasks/tiny_topic.yaml --out {eval_dir} "
                "progress=false")
    gen = subprocess.run([sys.executable, "-m", "emotune", "launch", "configs/train/tiny-cpu.yaml", "max_steps=4",
                          "save_steps=4", f"output_dir={run}", "--procs-per-node", "2", "--gpus-per-node", "0",
                          "--master-port", str(free_port()), "--sbatch", str(slurm_dir), "--eval-command", eval_cmd],
                         cwd=REPO, env=env, capture_output=True, text=True)
    assert gen.returncode == 0, gen.stderr
    assert (slurm_dir / "train.sbatch").exists() and (slurm_dir / "eval.sbatch").exists()

    def sbatch(script, *args):
        res = subprocess.run(["sbatch", "--parsable", *args, str(script)], cwd=REPO, env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        return res.stdout.strip().split(";")[0]

    train = sbatch(slurm_dir / "train.sbatch")
    ev = sbatch(slurm_dir / "eval.sbatch", f"--dependency=afterok:{train}")
    slurm_cluster.wait(train, timeout=600)
    slurm_cluster.wait(ev, timeout=600)
    logs = "\n".join(p.read_text(errors="replace") for p in sorted(slurm_dir.glob("*.out")))
    assert slurm_cluster.state(train) == ("COMPLETED", "0:0"), logs[-4000:]
    assert slurm_cluster.state(ev) == ("COMPLETED", "0:0"), logs[-4000:]
    assert (run / "checkpoint-4" / "COMPLETE").exists()
    assert "dist_world_size=2" in logs  # two ranks under srun
    t_end = datetime.fromisoformat(slurm_cluster.job(train)["EndTime"])
    e_start = datetime.fromisoformat(slurm_cluster.job(ev)["StartTime"])
    assert e_start >= t_end
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert "tiny_topic" in summary["tasks"]
