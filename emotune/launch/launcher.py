"""Turn one run config into the launcher commands for 1 GPU, N GPUs, N nodes or SLURM.

Every path starts the same per-rank entry point (`python -m emotune.launch.train_entry CONFIG
[key=value ...]`); only the launcher in front of it changes:

- one node:            deepspeed --num_gpus G --master_port P --module emotune.launch.train_entry ...
- nodes by hostfile:   deepspeed --hostfile H --master_addr A ... (pdsh starts the other nodes over ssh)
- one command a node:  deepspeed --hostfile H --no_ssh --node_rank R --master_addr A ... (run on each node)
- torchrun:            torchrun --nnodes N --nproc_per_node G --node_rank R --master_addr A ... -m emotune.launch.train_entry
- SLURM:               one srun task per node running the `--no_ssh` form with R = $SLURM_NODEID
                       (DeepSpeed's own `--launcher slurm` needs mpi4py and sets no RANK; see docs/cluster.md, *SLURM*)

The rendezvous address defaults to the hostfile's first host (DeepSpeed's runner picks the same node),
127.0.0.1 on one node only: a loopback master on a real cluster would make every other node wait on itself.

Variables the remote ranks need travel in a `.deepspeed_env` file (KEY=VALUE lines) that the
DeepSpeed runner reads through DS_ENV_FILE: PATH with this interpreter's bin/ first (so the remote
shells find the same venv), the Hugging Face / NCCL / Gloo / cache / DeepSpeed settings the user set,
and `--env` items. Anything that looks like a secret (token, password, key) is left out unless the user
names it with `--env KEY` or `--env KEY=VALUE`. DEEPSPEED_TIMEOUT (minutes) sets the process-group timeout.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from emotune.atomic import write_text
from emotune.errors import EmotuneError
from emotune.sbatch import check_line_value, check_sbatch_args
from emotune.sbatch import job_name as safe_job_name

ENTRY_MODULE = "emotune.launch.train_entry"
# Forwarded to remote ranks when set here: these names, and every name with one of the prefixes
# (cluster network, hub and cache settings). Secret-looking names are never forwarded unasked.
FORWARD_ENV = ("PATH", "PYTHONPATH", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "CUDA_HOME",
               "OMP_NUM_THREADS", "XDG_CACHE_HOME", "TORCH_EXTENSIONS_DIR", "TORCH_HOME", "TRITON_CACHE_DIR",
               "TRANSFORMERS_OFFLINE", "TRANSFORMERS_CACHE", "TOKENIZERS_PARALLELISM", "DS_ACCELERATOR")
FORWARD_PREFIXES = ("HF_", "HUGGINGFACE_", "NCCL_", "GLOO_", "EMOTUNE_", "DS_BUILD_", "FI_", "UCX_")
SECRET = re.compile(r"TOKEN|SECRET|PASSW|CREDENTIAL|(^|_)(API_)?KEY($|_)|AUTH", re.IGNORECASE)
LAUNCHERS = ("deepspeed", "torchrun")
_HOST_LINE = re.compile(r"^(?P<host>[A-Za-z0-9_.\-]+)\s+slots=(?P<slots>[1-9][0-9]*)$")


@dataclass
class LaunchPlan:
    config: str
    overrides: list[str] = field(default_factory=list)
    launcher: str = "deepspeed"
    nodes: int = 1
    procs_per_node: int = 1
    hostfile: str | None = None
    node_rank: int | None = None  # set: run this node's share only (--no_ssh / torchrun per node)
    master_addr: str | None = None  # None: the hostfile's first host, else 127.0.0.1 (one node)
    master_port: int = 29500
    ssh_port: int | None = None
    ssh_check: bool = True  # DeepSpeed's plain-ssh reachability probe of the first host
    timeout_minutes: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    python: str = "python"

    def validate(self, slurm: bool = False) -> None:
        if self.launcher not in LAUNCHERS:
            raise EmotuneError(f"--launcher must be one of {LAUNCHERS}, got {self.launcher!r}")
        if self.nodes < 1 or self.procs_per_node < 1:
            raise EmotuneError("--nodes and --procs-per-node must be at least 1")
        if self.node_rank is not None and not 0 <= self.node_rank < self.nodes:
            raise EmotuneError(f"--node-rank {self.node_rank} is outside 0..{self.nodes - 1}")
        if self.launcher == "deepspeed" and self.nodes > 1 and not self.hostfile and not slurm:
            raise EmotuneError("several nodes with the deepspeed launcher need --hostfile (or use --launcher torchrun)")
        if not 1 <= self.master_port <= 65535:
            raise EmotuneError(f"--master-port {self.master_port} is not a port number")
        if self.ssh_port is not None and not 1 <= self.ssh_port <= 65535:
            raise EmotuneError(f"--ssh-port {self.ssh_port} is not a port number")
        if self.timeout_minutes is not None and self.timeout_minutes < 1:
            raise EmotuneError(f"--timeout-minutes {self.timeout_minutes}: must be at least 1")
        if self.master_addr is not None:
            check_line_value(self.master_addr, "--master-addr")
        if self.nodes > 1 and not self.master_addr and not self.hostfile and not slurm:
            raise EmotuneError("several nodes need --master-addr (the first node's name) or a --hostfile whose first host it is")

    def rendezvous(self) -> str:
        """The master's address: as given, else the hostfile's first host, else loopback (one node)."""
        if self.master_addr:
            return self.master_addr
        if self.hostfile:
            return read_hostfile(self.hostfile)[0][0]
        return "127.0.0.1"


def read_hostfile(path: str) -> list[tuple[str, int]]:
    """`host slots=N` lines (DeepSpeed's format); `#` comments and blank lines are skipped."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise EmotuneError(f"hostfile {path}: {err.strerror}") from None
    hosts = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _HOST_LINE.match(line)
        if not match:
            raise EmotuneError(f"hostfile {path}, line {number}: expected 'HOST slots=N', got {raw.strip()!r}")
        hosts.append((match["host"], int(match["slots"])))
    if not hosts:
        raise EmotuneError(f"hostfile {path}: no hosts")
    if len({h for h, _ in hosts}) != len(hosts):
        raise EmotuneError(f"hostfile {path}: a host is listed twice")
    return hosts


def write_hostfile(path: str | os.PathLike, hosts: list[str], slots: int) -> Path:
    return write_text(path, "".join(f"{h} slots={slots}\n" for h in hosts))


def forwarded_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """What the remote ranks inherit from here: see FORWARD_ENV / FORWARD_PREFIXES; no secrets."""
    environ = dict(os.environ if environ is None else environ)
    env = {k: v for k, v in environ.items()
           if k in FORWARD_ENV or (k.startswith(FORWARD_PREFIXES) and not SECRET.search(k))}
    # Remote shells start with the login PATH: put this interpreter's bin/ (the venv) first, so
    # `python`, `deepspeed` and `emotune` there are the ones that started the job.
    venv_bin = str(Path(sys.executable).parent)
    path = env.get("PATH", "")
    if venv_bin not in path.split(os.pathsep):
        env["PATH"] = venv_bin + (os.pathsep + path if path else "")
    return env


def env_file_lines(plan: LaunchPlan) -> list[str]:
    env = forwarded_env()
    env.update(plan.env)
    if plan.timeout_minutes:
        env["DEEPSPEED_TIMEOUT"] = str(plan.timeout_minutes)
    for key, value in env.items():
        if "\n" in value or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise EmotuneError(f"environment variable {key!r} cannot be forwarded through .deepspeed_env")
    return [f"{k}={v}" for k, v in sorted(env.items())]


def write_env_file(plan: LaunchPlan, path: str | os.PathLike) -> Path:
    """The `.deepspeed_env` file (KEY=VALUE lines) whose variables the runner exports on every node."""
    return write_text(path, "".join(line + "\n" for line in env_file_lines(plan)))


def entry_args(plan: LaunchPlan) -> list[str]:
    return [plan.config, *plan.overrides]


def build_command(plan: LaunchPlan) -> list[str]:
    """The launcher command (an argv list, never a shell string) for this node or the whole job."""
    plan.validate()
    if plan.launcher == "torchrun":
        cmd = ["torchrun", "--nnodes", str(plan.nodes), "--nproc_per_node", str(plan.procs_per_node),
               "--master_addr", plan.rendezvous(), "--master_port", str(plan.master_port)]
        if plan.nodes > 1:
            cmd += ["--node_rank", str(plan.node_rank or 0)]
        return cmd + ["-m", ENTRY_MODULE, *entry_args(plan)]
    cmd = ["deepspeed"]
    if plan.hostfile:
        hosts = read_hostfile(plan.hostfile)
        if len(hosts) != plan.nodes:
            raise EmotuneError(f"hostfile {plan.hostfile} lists {len(hosts)} hosts but --nodes is {plan.nodes}")
        cmd += ["--hostfile", plan.hostfile, "--master_addr", plan.rendezvous()]
        if plan.node_rank is not None:
            cmd += ["--no_ssh", "--node_rank", str(plan.node_rank)]
        else:
            if plan.ssh_port:  # DeepSpeed passes it to its ssh check and to pdsh (PDSH_SSH_ARGS_APPEND)
                cmd += ["--ssh_port", str(plan.ssh_port)]
            if not plan.ssh_check:
                cmd += ["--no_ssh_check"]
    else:
        # On CPU-only machines --num_gpus is the number of processes (docs/training.md, *DeepSpeed on CPU*).
        cmd += ["--num_gpus", str(plan.procs_per_node)]
    cmd += ["--master_port", str(plan.master_port), "--module", ENTRY_MODULE, *entry_args(plan)]
    return cmd


SBATCH_TRAIN = """#!/bin/bash
#SBATCH --job-name={job_name}
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node=1
{gpu_line}#SBATCH --output={log_dir}/%x-%j.out
{extra}
# One srun task per node; each runs the DeepSpeed launcher for its own ranks (--no_ssh), node rank
# = $SLURM_NODEID, rendezvous at the first host. Generated by `emotune launch --sbatch`.
set -euo pipefail
cd {workdir}
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_PORT={master_port}
export DS_ENV_FILE={env_file}
HOSTFILE={run_dir}/hostfile.$SLURM_JOB_ID
scontrol show hostnames "$SLURM_JOB_NODELIST" | sed 's/$/ slots={procs_per_node}/' > "$HOSTFILE"
# The per-node shell gets its arguments positionally, so no argument is ever re-parsed by a shell.
srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c \\
  'exec {launcher} --hostfile "$1" --no_ssh --node_rank "$SLURM_NODEID" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" --module {entry} "${{@:2}}"' \\
  node "$HOSTFILE" {args}
"""

SBATCH_EVAL = """#!/bin/bash
#SBATCH --job-name={job_name}
#SBATCH --nodes=1
#SBATCH --ntasks=1
{gpu_line}#SBATCH --output={log_dir}/%x-%j.out
{extra}
# Evaluation runs as its own job after training (never inside the ZeRO-3 ranks).
# Submit with: sbatch --dependency=afterok:<training job id> this-file
set -euo pipefail
cd {workdir}
{command}
"""


def _gpu_line(gpus: int) -> str:
    return f"#SBATCH --gpus-per-node={gpus}\n" if gpus else ""


def _extra(lines: list[str]) -> str:
    return "".join(f"#SBATCH {x}\n" for x in check_sbatch_args(lines, "extra #SBATCH line"))


def sbatch_train_script(plan: LaunchPlan, run_dir: str, gpus_per_node: int, job_name: str = "emotune-train",
                        workdir: str | None = None, extra: list[str] | None = None, python: str | None = None) -> str:
    """A training sbatch script for `plan` (nodes x procs_per_node); the hostfile is made from SLURM's node list."""
    plan.validate(slurm=True)
    check_line_value(run_dir, "--sbatch directory")  # it goes into the #SBATCH --output line
    env_file = str(Path(run_dir) / ".deepspeed_env")
    launcher = "deepspeed" if python is None else f"{python} -m deepspeed.launcher.runner"
    return SBATCH_TRAIN.format(
        job_name=safe_job_name(job_name), nodes=plan.nodes, gpu_line=_gpu_line(gpus_per_node), log_dir=shlex.quote(run_dir),
        extra=_extra(extra or []), workdir=shlex.quote(workdir or os.getcwd()), master_port=plan.master_port,
        env_file=shlex.quote(env_file), run_dir=shlex.quote(run_dir), procs_per_node=plan.procs_per_node,
        launcher=launcher, entry=ENTRY_MODULE, args=" ".join(shlex.quote(a) for a in entry_args(plan)),
    )


def sbatch_eval_script(command: list[str], log_dir: str, gpus: int = 1, job_name: str = "emotune-eval",
                       workdir: str | None = None, extra: list[str] | None = None) -> str:
    """An evaluation sbatch script running `command` (an argv list, quoted here)."""
    check_line_value(log_dir, "--sbatch directory")
    return SBATCH_EVAL.format(job_name=safe_job_name(job_name), gpu_line=_gpu_line(gpus), log_dir=shlex.quote(log_dir),
                              extra=_extra(extra or []), workdir=shlex.quote(workdir or os.getcwd()),
                              command=shlex.join(command))
