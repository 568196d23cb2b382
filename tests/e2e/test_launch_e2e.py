"""The real launchers on loopback: pdsh over a real sshd runs the tiny CPU config for a few steps through
`emotune launch` (DeepSpeed ZeRO-3, gloo). Two "nodes" with --no_ssh (`--node-rank` on each) train the same losses
as one node with two ranks in tests/e2e/test_train_zero3_2ranks.py. The forms users type first (`deepspeed
--num_gpus 2 --module emotune train CFG`, `deepspeed --num_gpus 2 $(which emotune) train CFG`) train for real
in tests/e2e/test_crash_resume.py, which launches its reference run and its last resume that way.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sshd_fixture import local_addresses, local_sshd, missing_programs
from support import free_port
from system_programs import require

REPO = Path(__file__).resolve().parents[2]
CONFIG = "configs/train/tiny-cpu.yaml"
STEPS = 4
pytestmark = pytest.mark.e2e


def launch(args: list[str], env: dict | None = None, wait: bool = True, base_env: dict | None = None):
    cmd = [sys.executable, "-m", "emotune", "launch", CONFIG, f"max_steps={STEPS}", "save_steps=4", "logging_steps=1", *args]
    full_env = dict(os.environ if base_env is None else base_env, PYTHONUNBUFFERED="1", **(env or {}))
    if wait:
        return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def losses(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r and "step" in r]


def finished(run_dir: Path) -> bool:
    return (run_dir / f"checkpoint-{STEPS}" / "COMPLETE").exists()


def test_pdsh_launcher_over_real_sshd(tmp_path):
    """Two "nodes" by name (this machine's hostname first, then localhost), no --master-addr: the
    rendezvous defaults to the hostfile's first host, as on a real cluster."""
    require(missing_programs(), "the pdsh launcher test", "Debian openssh-server and pdsh; .ci/run installs them")
    names = [socket.gethostname(), "localhost"]
    listen = local_addresses(names)
    assert listen, f"{names} must resolve to this machine"
    run = tmp_path / "pdsh"
    hostfile = tmp_path / "hosts"
    hostfile.write_text("".join(f"{n} slots=1\n" for n in names))
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    with local_sshd(tmp_path / "sshd", listen) as sshd:
        res = launch([f"output_dir={run}", "--nodes", "2", "--procs-per-node", "1", "--hostfile", str(hostfile),
                      "--master-port", str(free_port()), "--ssh-port", str(sshd.port),
                      "--no-ssh-check", "--env-file", str(tmp_path / "env"), "--env", "HF_HUB_OFFLINE=1"],
                     env=sshd.client_env(), base_env=env)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    out = res.stdout + res.stderr
    assert "pdsh" in out and f"--master_addr={names[0]}" in out, out[-3000:]
    assert finished(run) and len(losses(run)) == STEPS
    forwarded = dict(line.split("=", 1) for line in (tmp_path / "env").read_text().splitlines())
    assert forwarded["PATH"].split(":")[0] == str(Path(sys.executable).parent) and forwarded["HF_HUB_OFFLINE"] == "1"
