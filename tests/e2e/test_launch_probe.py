"""Every launcher form of `emotune launch`, started for real on loopback with `--probe` in each rank.

deepspeed on one node, hostfile + pdsh over a real sshd, `--node-rank` on each of two "nodes", torchrun on
two "nodes" (one given its rank, one taking it from the scheduler's PET_NODE_RANK), and the SLURM scripts
(DeepSpeed and torchrun) on the one-node cluster. Each rank's probe (emotune.launch.probe: no torch, no
model) writes what it sees; the test asserts rank, world size, master address and port, the timeout and
every --env value, and prints the table (`pytest -s`).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from slurm_cluster import slurm_cluster  # noqa: F401  (the fixture)
from sshd_fixture import local_addresses, local_sshd, missing_programs
from support import free_port
from system_programs import require

REPO = Path(__file__).resolve().parents[2]
CONFIG = "configs/train/tiny-cpu.yaml"
ENV = {"EMOTUNE_PROBE_A": "x y", "NCCL_PROBE_B": "2", "PROBE_TOKEN": "s3cret"}  # a space; a secret's hash only
TIMEOUT = "7"
pytestmark = pytest.mark.e2e
TABLE: list[str] = []


def probe_args(out: Path, port: int) -> list[str]:
    args = [f"output_dir={out}", "--probe", "--timeout-minutes", TIMEOUT, "--master-port", str(port)]
    for key, value in ENV.items():
        args += ["--env", f"{key}={value}"]
    return args


def launch(args: list[str], env: dict | None = None, wait: bool = True):
    cmd = [sys.executable, "-m", "emotune", "launch", CONFIG, *args]
    full = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "PET_NODE_RANK")}
    full.update(env or {})
    full["PYTHONUNBUFFERED"] = "1"
    if wait:
        return subprocess.run(cmd, cwd=REPO, env=full, capture_output=True, text=True, timeout=300)
    return subprocess.Popen(cmd, cwd=REPO, env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def check_ranks(form: str, out: Path, world: int, master: str, port: int) -> None:
    rows = [json.loads(p.read_text()) for p in sorted((out / "launch-probe").glob("rank-*.json"))]
    secret = rows[0]["env"]["PROBE_TOKEN"] if rows else None
    for r in sorted(rows, key=lambda r: int(r["rank"])):
        env = ", ".join(f"{k}={v}" for k, v in r["env"].items())
        TABLE.append(f"| {form} | {r['rank']} | {r['local_rank']} | {r['world_size']} | {r['master_addr']} | "
                     f"{r['master_port']} | {r['deepspeed_timeout']} | {env} |")
    assert sorted(int(r["rank"]) for r in rows) == list(range(world)), rows
    for r in rows:
        assert (r["world_size"], r["master_addr"], r["master_port"]) == (str(world), master, str(port)), r
        assert r["deepspeed_timeout"] == TIMEOUT, r
        assert {k: v for k, v in r["env"].items() if k != "PROBE_TOKEN"} == {k: v for k, v in ENV.items() if k != "PROBE_TOKEN"}
        assert r["env"]["PROBE_TOKEN"] == secret and "s3cret" not in json.dumps(r) and secret.startswith("<secret: 6 chars")


def test_deepspeed_one_node(tmp_path):
    port = free_port()
    res = launch([*probe_args(tmp_path / "run", port), "--procs-per-node", "2"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "DEEPSPEED_TIMEOUT" in res.stderr and "from this launcher's environment" in res.stderr
    check_ranks("deepspeed, one node", tmp_path / "run", 2, "127.0.0.1", port)


def test_hostfile_pdsh_over_real_sshd(tmp_path):
    """Two "nodes" by name with slots=4 each and --procs-per-node 1: 2 ranks, master = the first host."""
    require(missing_programs(), "the pdsh launcher test", "Debian openssh-server and pdsh; .ci/run installs them")
    names = [socket.gethostname(), "localhost"]
    listen = local_addresses(names)
    assert listen, f"{names} must resolve to this machine"
    hostfile = tmp_path / "hosts"
    hostfile.write_text("".join(f"{n} slots=4\n" for n in names))
    port = free_port()
    with local_sshd(tmp_path / "sshd", listen) as sshd:
        res = launch([*probe_args(tmp_path / "run", port), "--nodes", "2", "--procs-per-node", "1", "--hostfile",
                      str(hostfile), "--ssh-port", str(sshd.port), "--no-ssh-check", "--env-file", str(tmp_path / "env")],
                     env=sshd.client_env())
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "pdsh" in res.stdout + res.stderr and "exports on every node" in res.stderr
    check_ranks("deepspeed, hostfile + pdsh (slots=4, --procs-per-node 1)", tmp_path / "run", 2, names[0], port)


def test_node_rank_on_each_node(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    port = free_port()
    common = [*probe_args(tmp_path / "run", port), "--nodes", "2", "--hostfile", str(hostfile), "--master-addr", "127.0.0.1"]
    nodes = [launch([*common, "--node-rank", str(r)], wait=False) for r in (0, 1)]
    outs = [p.communicate(timeout=300)[0] for p in nodes]
    assert all(p.returncode == 0 for p in nodes), "\n".join(o[-3000:] for o in outs)
    check_ranks("deepspeed --no_ssh, --node-rank on each of 2 nodes", tmp_path / "run", 2, "127.0.0.1", port)


def test_torchrun_two_nodes(tmp_path):
    """Node 0 given --node-rank, node 1 taking it from the scheduler's variable (PET_NODE_RANK)."""
    port = free_port()
    common = [*probe_args(tmp_path / "run", port), "--launcher", "torchrun", "--nodes", "2", "--procs-per-node", "1",
              "--master-addr", "127.0.0.1"]
    nodes = [launch([*common, "--node-rank", "0"], wait=False), launch(common, env={"PET_NODE_RANK": "1"}, wait=False)]
    outs = [p.communicate(timeout=300)[0] for p in nodes]
    assert all(p.returncode == 0 for p in nodes), "\n".join(o[-3000:] for o in outs)
    assert "node rank from PET_NODE_RANK" in outs[1]
    check_ranks("torchrun, 2 nodes (--node-rank / PET_NODE_RANK)", tmp_path / "run", 2, "127.0.0.1", port)


@pytest.mark.parametrize("launcher", ["deepspeed", "torchrun"])
def test_slurm_script(slurm_cluster, tmp_path, launcher):  # noqa: F811
    port = free_port()
    env = {"SLURM_CONF": slurm_cluster.env["SLURM_CONF"]}
    gen = launch([*probe_args(tmp_path / "run", port), "--launcher", launcher, "--procs-per-node", "2",
                  "--gpus-per-node", "0", "--time", "10", "--sbatch", str(tmp_path / "slurm")], env=env)
    assert gen.returncode == 0, gen.stderr
    # submitted from a bare environment: everything the ranks need comes from the script and rank.env
    bare = {"SLURM_CONF": env["SLURM_CONF"], "PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/")}
    job = subprocess.run(["sbatch", "--parsable", "--export=NONE", str(tmp_path / "slurm" / "train.sbatch")],
                         cwd=tmp_path, env=bare, capture_output=True, text=True)
    assert job.returncode == 0, job.stderr
    jid = job.stdout.strip().split(";")[0]
    slurm_cluster.wait(jid, timeout=300)
    logs = "\n".join(p.read_text(errors="replace") for p in (tmp_path / "slurm").glob("*.out"))
    assert slurm_cluster.state(jid) == ("COMPLETED", "0:0"), logs[-4000:]
    master = slurm_cluster.run("scontrol", "show", "hostnames", slurm_cluster.job(jid)["NodeList"]).stdout.split()[0]
    check_ranks(f"SLURM script, {launcher} (1 node x 2)", tmp_path / "run", 2, master, port)


def teardown_module(module):
    print("\n| form | RANK | LOCAL_RANK | WORLD_SIZE | MASTER_ADDR | MASTER_PORT | DEEPSPEED_TIMEOUT | --env values |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(TABLE))
