"""ZeRO-3 with 2 ranks launched by `emotune launch` (the `deepspeed` launcher) trains a tiny LLaMA with EMO, and
its loss trajectory and weights match a 1-rank run with the same global batch (2 x 2 accumulation == 2 ranks x 2);
two "nodes" of one rank each (`--node-rank` on each, deepspeed's --no_ssh) train the same losses as the one node.

Tolerance: the runs sum the same per-token losses in a different order (gloo all-reduce across ranks vs.
accumulation in one process), so they agree to float32 rounding: rtol 1e-5 on every step's loss, atol 1e-5 on
every exported weight; the two 2-rank runs agree to rtol 1e-6. Measured wall time of a 2-rank launch (4 steps,
2 CPU cores): ~12 s on an idle machine, ~55 s while other test jobs shared the cores.
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from support import free_port
from train_builders import losses_from_log, run_config, tiny_setup

from emotune.manifest import verify_checkpoint

pytestmark = pytest.mark.e2e


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


def write(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_two_ranks_match_one_rank_and_two_nodes_match_one_node(tmp_path):
    setup = tiny_setup(tmp_path / "setup")
    common = dict(max_steps=4, save_steps=4, per_device_train_batch_size=2, objective={"name": "emo"})
    one = write(run_config(setup, tmp_path / "one", gradient_accumulation_steps=2, **common), tmp_path / "one.yaml")
    two = write(run_config(setup, tmp_path / "two", gradient_accumulation_steps=1, **common), tmp_path / "two.yaml")
    nodes = write(run_config(setup, tmp_path / "nodes", gradient_accumulation_steps=1, **common), tmp_path / "nodes.yaml")

    # the 1-rank run beside the 2-rank one: independent, and a second core is idle while a launcher starts up
    with tempfile.TemporaryFile("w+") as log1:
        p1 = subprocess.Popen([sys.executable, "-m", "emotune", "train", str(one)], env=clean_env(), stdout=log1,
                              stderr=subprocess.STDOUT, text=True)
        start = time.time()
        r2 = subprocess.run([sys.executable, "-m", "emotune", "launch", str(two), "--procs-per-node", "2", "--master-port",
                             str(free_port())], env=clean_env(), capture_output=True, text=True, timeout=300)
        wall = time.time() - start
        p1.wait(timeout=300)
        log1.seek(0)
        assert p1.returncode == 0, log1.read()[-3000:]
    assert r2.returncode == 0, r2.stdout[-3000:] + r2.stderr[-3000:]
    print(f"2-rank deepspeed launch wall time (beside the 1-rank run): {wall:.1f} s")

    m2 = verify_checkpoint(tmp_path / "two" / "checkpoint-4")
    assert m2["world_size"] == 2 and verify_checkpoint(tmp_path / "one" / "checkpoint-4")["world_size"] == 1
    assert "global batch 4 = 2 x 2 ranks x 1 accumulation" in r2.stdout + r2.stderr
    l1, l2 = losses_from_log(tmp_path / "one" / "train_log.jsonl"), losses_from_log(tmp_path / "two" / "train_log.jsonl")
    assert sorted(l1) == sorted(l2) == [1, 2, 3, 4]
    for step in l1:
        assert l2[step] == pytest.approx(l1[step], rel=1e-5), step
    assert l1[4] < l1[1]  # it learns
    w1 = load_file(str(tmp_path / "one" / "checkpoint-4" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "checkpoint-4" / "model.safetensors"))
    assert w1.keys() == w2.keys()
    for k in w1:
        assert w1[k].shape == w2[k].shape and w1[k].numel() > 0
        torch.testing.assert_close(w1[k], w2[k], rtol=0, atol=1e-5)
    # every rank wrote its ZeRO shard of the resumable state
    assert len(list((tmp_path / "two" / "resume" / "step-4").glob("zero_pp_rank_*_model_states.pt"))) == 2

    # Two "nodes" of one rank each, --no_ssh: `emotune launch --node-rank R` on each, as on a cluster without ssh.
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    args = [sys.executable, "-m", "emotune", "launch", str(nodes), "--nodes", "2", "--procs-per-node", "1", "--hostfile",
            str(hostfile), "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "--env-file", str(tmp_path / "env")]
    procs = [subprocess.Popen([*args, "--node-rank", str(r)], env=clean_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    assert (tmp_path / "nodes" / "checkpoint-4" / "COMPLETE").exists()
    ln = losses_from_log(tmp_path / "nodes" / "train_log.jsonl")
    assert sorted(ln) == [1, 2, 3, 4]
    for step in l2:
        assert ln[step] == pytest.approx(l2[step], rel=1e-6, abs=1e-7), step
