"""Nothing a caller passes can inject a line into a generated SLURM script or escape the run's folders.

The script writers themselves are guarded (emotune.sbatch), whatever validated or did not validate the
values before: `#SBATCH` values stay on their line, job names are made of safe characters, commands are
shlex-quoted (checked by parsing the generated script with bash), and task / suite names that become
directory names are one path component.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from system_programs import require

from emotune.errors import EmotuneError
from emotune.launch.launcher import LaunchPlan
from emotune.launch.slurm_script import SlurmOptions, sbatch_eval_script, sbatch_train_script
from emotune.resources import shipped
from emotune.scheduling.runners.base import job_output_dir
from emotune.scheduling.runners.slurm import SlurmRunner
from emotune.scheduling.store import Row


def row(task: str = "sst2", suite: str = "icl", **kw) -> Row:
    fields = {k: None for k in Row.__dataclass_fields__}
    fields.update(id=7, run="/runs/a", step=30, fingerprint="abcdef0123456789", suite=suite, suite_version="v1",
                  task=task, checkpoint="/runs/a/checkpoint-30", status="running", attempts=1, created_at=0.0, **kw)
    return Row(**fields)


def sbatch_lines(script: str) -> list[str]:
    """The directives sbatch reads: #SBATCH lines before the first command of the script."""
    out = []
    for ln in script.splitlines()[1:]:
        if ln.startswith("#SBATCH"):
            out.append(ln)
        elif ln.strip() and not ln.startswith("#"):
            break
    return out


def exec_argv(script: str) -> list[str]:
    """The argv the script's `exec` line runs, as bash parses it (quoted newlines included)."""
    command = script[script.index("\nexec ") + len("\nexec "):]
    out = subprocess.run(["bash", "-c", "printf '%s\\0' " + command], capture_output=True, check=True).stdout
    return out.decode().split("\0")[:-1]


def test_eval_script_of_a_normal_row(tmp_path):
    runner = SlurmRunner("/s.sqlite", "{python} -m emotune.cli eval --model {model} --tasks {task} --out {out}",
                         60.0, tmp_path, sbatch_args=["--gres=gpu:1", "-p gpu"], setup=["module load cuda"])
    script = runner.script(row(), "tok")
    assert "#SBATCH --job-name=emotune-eval-30-sst2" in script and "#SBATCH --gres=gpu:1" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


@pytest.mark.parametrize("task", ["x\n#SBATCH --wrap=rm -rf ~", "a b;touch /tmp/pwned", "$(id)", "t\rx"])
def test_hostile_task_names_never_leave_their_line(tmp_path, task):
    runner = SlurmRunner("/s.sqlite", "{python} eval {task}", 60.0, tmp_path)
    script = runner.script(row(task=task), "tok", task_spec=task)
    lines = sbatch_lines(script)
    assert [ln.split("=", 1)[0] for ln in lines] == ["#SBATCH --job-name", "#SBATCH --output", "#SBATCH --ntasks"]
    name = lines[0].split("=", 1)[1]
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"), name
    # the task reaches the job's command as one argument, exactly as given (bash parses the quoting)
    argv = exec_argv(script)
    assert argv[argv.index("--task") + 1] == task
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


@pytest.mark.parametrize("arg", ["--gres=gpu:1\nrm -rf ~", "--time=1:00\r", "partition=gpu", "", "-p\x00x"])
def test_bad_sbatch_args_are_refused(tmp_path, arg):
    with pytest.raises(EmotuneError, match="sbatch-arg"):
        SlurmRunner("/s.sqlite", "{python} eval", 60.0, tmp_path, sbatch_args=[arg])


def test_setup_lines_and_script_dir_with_newlines_are_refused(tmp_path):
    runner = SlurmRunner("/s.sqlite", "{python} eval", 60.0, tmp_path, setup=["module load x\nrm -rf ~"])
    with pytest.raises(EmotuneError, match="--setup"):
        runner.script(row(), "tok")
    runner = SlurmRunner("/s.sqlite", "{python} eval", 60.0, tmp_path / "a\nb")
    with pytest.raises(EmotuneError, match="newline"):
        runner.script(row(), "tok")


@pytest.mark.parametrize("name", ["../../etc", "a/b", "..", ".", "", "x\ny"])
def test_task_and_suite_names_are_one_path_component(name):
    with pytest.raises(EmotuneError, match="directory name"):
        job_output_dir("/runs/a", row(task=name))
    with pytest.raises(EmotuneError, match="directory name"):
        job_output_dir("/runs/a", row(suite=name))
    assert job_output_dir("/runs/a", row()) == Path("/runs/a/eval/icl/step-30-abcdef01/sst2")


def test_training_script_writer_refuses_what_would_break_its_lines(tmp_path):
    plan = LaunchPlan(config="c.yaml", nodes=2, procs_per_node=4)
    script = sbatch_train_script(plan, str(tmp_path), 4, job_name="my run;$(id)\n#SBATCH --x", extra=["--partition=gpu"])
    assert "#SBATCH --job-name=my_run___id___SBATCH_--x\n" in script and "#SBATCH --partition=gpu\n" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    with pytest.raises(EmotuneError, match="extra #SBATCH line"):
        sbatch_train_script(plan, str(tmp_path), 4, extra=["--partition=gpu\nrm -rf ~"])
    with pytest.raises(EmotuneError, match="--sbatch directory"):
        sbatch_train_script(plan, str(tmp_path / "x\ny"), 4)
    with pytest.raises(EmotuneError, match="--sbatch directory"):
        sbatch_eval_script(["emotune", "eval"], str(tmp_path / "x\ny"))
    with pytest.raises(EmotuneError, match="--master-addr"):
        sbatch_train_script(LaunchPlan(config="c.yaml", master_addr="h\nrm -rf ~"), str(tmp_path), 1)


def shellcheck(text: str, tmp_path: Path, name: str = "s.sbatch") -> None:
    require([] if shutil.which("shellcheck") else ["shellcheck"], "the generated SLURM script lint", "Debian shellcheck")
    path = tmp_path / name
    path.write_text(text)
    res = subprocess.run(["shellcheck", "--shell=bash", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("launcher", ["deepspeed", "torchrun"])
def test_generated_scripts_pass_shellcheck(tmp_path, launcher):
    """Every script `emotune launch --sbatch` writes: training (both launchers, training and probe), evaluation."""
    plan = LaunchPlan("my config.yaml", ["output_dir=runs/a b", "x=$(id)"], launcher=launcher, nodes=2,
                      procs_per_node=4, timeout_minutes=5, env={"A": "x y"})
    extra = SlurmOptions("2-00:00:00", "gpu,debug", "proj-1", 16, True, ["--qos=high", "--mem=0"]).lines()
    train = sbatch_train_script(plan, str(tmp_path / "run dir"), 4, extra=extra)
    shellcheck(train, tmp_path)
    assert "SC2155" not in train and "export MASTER_ADDR=$" not in train  # a failing scontrol is not hidden
    probe = sbatch_train_script(LaunchPlan("c.yaml", launcher=launcher, nodes=2, module="emotune.launch.probe",
                                           module_args=["/runs/p", "A"]), str(tmp_path), 0)
    shellcheck(probe, tmp_path)
    ev = sbatch_eval_script(["emotune", "eval", "--model", "ck pt"], str(tmp_path), extra=extra,
                            env_file=str(tmp_path / "rank.env"))
    shellcheck(ev, tmp_path)
    for line in ("--time=2-00:00:00", "--partition=gpu,debug", "--account=proj-1", "--cpus-per-task=16",
                 "--exclusive", "--qos=high", "--mem=0"):
        assert f"#SBATCH {line}\n" in train and f"#SBATCH {line}\n" in ev
    assert sbatch_lines(train)[-1] == "#SBATCH --mem=0"  # before the first command: sbatch reads them all


def test_shipped_slurm_examples_pass_shellcheck(tmp_path):
    for path in sorted(shipped("slurm").glob("*.example")):
        shellcheck(path.read_text(), tmp_path, path.name)


def test_torchrun_script_runs_torchrun(tmp_path):
    script = sbatch_train_script(LaunchPlan("c.yaml", launcher="torchrun", nodes=2, procs_per_node=8), str(tmp_path), 8)
    assert "exec torchrun --nnodes 2 --nproc_per_node 8 --node_rank \"$SLURM_NODEID\"" in script
    assert "deepspeed" not in script and "HOSTFILE" not in script
    ds = sbatch_train_script(LaunchPlan("c.yaml", nodes=2, procs_per_node=8), str(tmp_path), 8)
    assert "exec deepspeed --hostfile \"$1\" --num_gpus 8 --no_ssh" in ds and "exec torchrun" not in ds


@pytest.mark.parametrize("options,match", [
    (dict(time="2 days"), "--time"), (dict(time="1:00\n#SBATCH -x"), "--time"), (dict(partition="gpu;rm"), "--partition"),
    (dict(account="a b"), "--account"), (dict(cpus_per_task=0), "--cpus-per-task"),
    (dict(extra=["--nodes=4"]), "come from --nodes"), (dict(extra=["-N 4"]), "come from --nodes"),
    (dict(extra=["--ntasks-per-node=8"]), "come from --nodes"), (dict(extra=["qos=high"]), "not an sbatch option"),
])
def test_bad_slurm_options_are_refused(options, match):
    with pytest.raises(EmotuneError, match=match):
        SlurmOptions(**options).lines()
    assert SlurmOptions(time="90").lines() == ["--time=90"]
