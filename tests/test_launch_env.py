"""`emotune launch`: what the user typed reaches every rank in every launcher form, or is refused in one line.

In-process (the `emotune` dispatcher's `main`, the launcher's subprocess call captured), so each case is
milliseconds; tests/e2e/test_launch_probe.py starts every form for real.
"""

import subprocess
import sys

import pytest

from emotune.cli import main as emotune
from emotune.errors import EmotuneError
from emotune.launch import launch_cli
from emotune.launch.launcher import PROBE_MODULE, LaunchPlan, build_command, scheduler_node_rank

CFG = "configs/train/tiny-cpu.yaml"
SLURM_STEP = {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_NODES": "2", "SLURM_STEP_NUM_TASKS": "2"}


@pytest.fixture
def started(monkeypatch):
    """The launcher commands `emotune launch` would start, with their environments."""
    calls = []

    def run(cmd, env=None, **kw):
        calls.append((cmd, env))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(launch_cli.subprocess, "run", run)
    for name in ("MASTER_ADDR", "MASTER_PORT", "SLURM_JOB_ID", "SLURM_NODEID", "SLURM_STEP_ID", "PET_NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    return calls


def one_line_error(capsys, argv, match):
    assert emotune(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err and "Traceback" not in err, err


def test_readme_docker_line_parses_overrides_after_options(started, tmp_path):
    """`emotune launch CFG --procs-per-node 8 output_dir=/runs/x`: positionals, options and overrides in any order."""
    assert emotune(["launch", CFG, "--procs-per-node", "8", f"output_dir={tmp_path}/x", "--env", "A=1", "seed=3"]) == 0
    (cmd, _), = started
    assert cmd[-3:] == [CFG, f"output_dir={tmp_path}/x", "seed=3"] and cmd[cmd.index("--num_gpus") + 1] == "8"


def test_every_command_takes_positionals_after_options(tmp_path, capsys):
    """The same grammar everywhere (emotune.errors.ArgumentParser): `report A --out D B` reads both runs."""
    assert emotune(["report", str(tmp_path / "a"), "--out", str(tmp_path / "out"), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" not in err and "run directory" in err


@pytest.mark.parametrize("form,extra", [
    ("deepspeed local", ["--procs-per-node", "2"]),
    ("deepspeed --no_ssh", ["--nodes", "2", "--hostfile", "HOSTS", "--node-rank", "1"]),
    ("torchrun", ["--launcher", "torchrun", "--nodes", "2", "--master-addr", "10.0.0.1", "--node-rank", "1"]),
])
def test_timeout_and_env_reach_the_ranks_of_local_forms(started, tmp_path, capsys, form, extra):
    """DeepSpeed reads .deepspeed_env on its pdsh path only: every other form gets them in its own environment."""
    hosts = tmp_path / "hosts"
    hosts.write_text("a slots=2\nb slots=2\n")
    extra = [str(hosts) if x == "HOSTS" else x for x in extra]
    assert emotune(["launch", CFG, *extra, "--timeout-minutes", "7", "--env", "A=x y", "--env", "B=$HOME"]) == 0
    (cmd, env), = started
    assert env["DEEPSPEED_TIMEOUT"] == "7" and env["A"] == "x y" and env["B"] == "$HOME"
    err = capsys.readouterr().err
    assert "from this launcher's environment" in err and "DEEPSPEED_TIMEOUT" in err and ".deepspeed_env" not in err


def test_pdsh_form_gets_them_through_the_env_file(started, tmp_path, capsys):
    hosts = tmp_path / "hosts"
    hosts.write_text("a slots=8\nb slots=8\n")
    env_file = tmp_path / "env"
    assert emotune(["launch", CFG, "--nodes", "2", "--procs-per-node", "4", "--hostfile", str(hosts), "--env-file",
                    str(env_file), "--timeout-minutes", "7", "--env", "A=1"]) == 0
    (cmd, env), = started
    lines = env_file.read_text().splitlines()
    assert "DEEPSPEED_TIMEOUT=7" in lines and "A=1" in lines and env["DS_ENV_FILE"] == str(env_file)
    assert env_file.stat().st_mode & 0o077 == 0  # --env HF_TOKEN would be in it
    assert cmd[cmd.index("--num_gpus") + 1] == "4"  # 4 ranks a node, not the hostfile's 8 slots
    assert "exports on every node" in capsys.readouterr().err
    # DeepSpeed double-quotes values on the remote shell line: what it would change is refused
    one_line_error(capsys, ["launch", CFG, "--nodes", "2", "--hostfile", str(hosts), "--env-file", str(env_file),
                            "--env", "B=$(id)"], "cannot reach the other nodes intact")


def test_hostfile_slots_and_procs_per_node(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("a slots=8\nb slots=8\n")
    plan = LaunchPlan("c.yaml", nodes=2, hostfile=str(hosts))
    assert "--num_gpus" not in build_command(plan) and plan.procs() == 8  # default: the hostfile's slots
    torchrun = build_command(LaunchPlan("c.yaml", launcher="torchrun", nodes=2, hostfile=str(hosts), node_rank=0))
    assert torchrun[torchrun.index("--nproc_per_node") + 1] == "8"
    with pytest.raises(EmotuneError, match="fewer slots than --procs-per-node 16"):
        build_command(LaunchPlan("c.yaml", nodes=2, procs_per_node=16, hostfile=str(hosts)))
    hosts.write_text("a slots=8\nb slots=4\n")
    with pytest.raises(EmotuneError, match="different slots"):
        build_command(LaunchPlan("c.yaml", launcher="torchrun", nodes=2, hostfile=str(hosts), node_rank=0))


def test_torchrun_node_rank_comes_from_the_scheduler_or_is_refused(started, capsys, monkeypatch):
    base = ["launch", CFG, "--launcher", "torchrun", "--nodes", "2", "--master-addr", "n1"]
    one_line_error(capsys, base, "needs --node-rank")  # never two rank-0 nodes
    for key, value in dict(SLURM_STEP, SLURM_NODEID="1").items():
        monkeypatch.setenv(key, value)
    assert emotune(base) == 0
    (cmd, _), = started
    assert cmd[cmd.index("--node_rank") + 1] == "1" and "SLURM_NODEID" in capsys.readouterr().err
    assert emotune([*base, "--node-rank", "0"]) == 0 and started[-1][0][started[-1][0].index("--node_rank") + 1] == "0"
    capsys.readouterr()
    monkeypatch.setenv("SLURM_STEP_NUM_NODES", "1")
    one_line_error(capsys, base, "runs on 1 node(s)")


def test_scheduler_node_rank_cases():
    assert scheduler_node_rank(2, {}) is None
    assert scheduler_node_rank(2, {"PET_NODE_RANK": "1"}) == (1, "PET_NODE_RANK")
    assert scheduler_node_rank(2, dict(SLURM_STEP, SLURM_NODEID="0")) == (0, "SLURM_NODEID")
    batch = {k: v for k, v in SLURM_STEP.items() if k != "SLURM_STEP_ID"}
    with pytest.raises(EmotuneError, match="only the first node runs this"):  # the batch script, not a step
        scheduler_node_rank(2, dict(batch, SLURM_NODEID="0"))
    with pytest.raises(EmotuneError, match="srun --ntasks-per-node=1"):
        scheduler_node_rank(2, dict(SLURM_STEP, SLURM_NODEID="0", SLURM_STEP_NUM_TASKS="16"))
    with pytest.raises(EmotuneError, match=r"PET_NODE_RANK='2' \(environment\)"):
        scheduler_node_rank(2, {"PET_NODE_RANK": "2"})


@pytest.mark.parametrize("env,match", [({"MASTER_PORT": "abc"}, "MASTER_PORT='abc' (environment)"),
                                       ({"MASTER_PORT": "70000"}, "MASTER_PORT='70000'"),
                                       ({"MASTER_ADDR": "a\nb"}, "MASTER_ADDR (environment)")])
def test_bad_environment_inputs_are_one_line(started, capsys, monkeypatch, env, match):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    one_line_error(capsys, ["launch", CFG, "--dry-run"], match)


def test_environment_defaults_and_options(started, monkeypatch):
    monkeypatch.setenv("MASTER_PORT", "29611")
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.9")
    assert emotune(["launch", CFG, "--launcher", "torchrun", "--nodes", "2", "--node-rank", "1"]) == 0
    cmd = started[-1][0]
    assert cmd[cmd.index("--master_port") + 1] == "29611" and cmd[cmd.index("--master_addr") + 1] == "10.0.0.9"
    assert emotune(["launch", CFG, "--master-port", "29612"]) == 0
    assert started[-1][0][started[-1][0].index("--master_port") + 1] == "29612"


def test_probe_replaces_training_in_every_rank(started, tmp_path):
    assert emotune(["launch", CFG, f"output_dir={tmp_path}", "--probe", "--env", "A=1", "--procs-per-node", "2"]) == 0
    cmd = started[-1][0]
    assert cmd[cmd.index("--module") + 1:] == [PROBE_MODULE, str(tmp_path / "launch-probe"), "A"]


def test_slurm_options_need_sbatch(capsys):
    one_line_error(capsys, ["launch", CFG, "--time", "60"], "--time only applies to the SLURM script")


def test_launch_help_lists_what_it_accepts():
    res = subprocess.run([sys.executable, "-m", "emotune", "launch", "--help"], capture_output=True, text=True)
    assert res.returncode == 0
    for word in ("key=value", "--procs-per-node", "--node-rank", "--timeout-minutes", "--env", "--probe", "--sbatch",
                 "--time", "--partition", "--account", "--cpus-per-task", "--exclusive", "--sbatch-arg", "MASTER_PORT",
                 "MASTER_ADDR", "SLURM_NODEID", "PET_NODE_RANK", "any order"):
        assert word in res.stdout, word


@pytest.mark.parametrize("argv,match", [
    (["--sbatch", "DIR", "--eval-command", "emotune eval 'x"], "--eval-command"),
    (["--sbatch", "DIR", "--hostfile", "h"], "no meaning with --sbatch"),
    (["--master-addr", "a b"], "not a host name"),
    (["--env", "1A=2", "--dry-run"], "cannot be forwarded"),
    (["--procs-per-node", "0"], "at least 1"),
    (["--timeout-minutes", "0"], "at least 1"),
    (["--sbatch", "DIR", "--sbatch-arg=--nodes=3"], "come from --nodes"),
])
def test_new_user_mistakes_are_one_line(started, capsys, tmp_path, argv, match):
    argv = [str(tmp_path / "s") if a == "DIR" else a for a in argv]
    one_line_error(capsys, ["launch", CFG, *argv], match)
    assert not (tmp_path / "s").exists() and not started  # nothing written, nothing started
