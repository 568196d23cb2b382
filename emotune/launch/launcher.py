"""Turn one run config into the launcher command for 1 GPU, N GPUs or N nodes (SLURM: launch/slurm_script.py).

Every path starts the same per-rank entry point (`python -m emotune.launch.train_entry CONFIG
[key=value ...]`, or the launch probe with `--probe`); only the launcher in front of it changes:

- one node:            deepspeed --num_gpus G --master_port P --module emotune.launch.train_entry ...
- nodes by hostfile:   deepspeed --hostfile H --num_gpus G --master_addr A ... (pdsh starts every node over ssh)
- one command a node:  deepspeed --hostfile H --num_gpus G --no_ssh --node_rank R --master_addr A ... (on each node)
- torchrun:            torchrun --nnodes N --nproc_per_node G --node_rank R --master_addr A ... -m emotune.launch.train_entry

The rendezvous address defaults to the hostfile's first host (DeepSpeed's runner picks the same node),
127.0.0.1 on one node only: a loopback master on a real cluster would make every other node wait on itself.

What every rank must see beyond the launcher's own variables (the *rank environment*, `rank_env`): PATH
with this interpreter's bin/ first (so remote shells find the same venv), the Hugging Face / NCCL / Gloo /
cache / DeepSpeed settings the user set, `--env` items, and DEEPSPEED_TIMEOUT (`--timeout-minutes`, the
process-group timeout every rank reads when DeepSpeed is imported). How it reaches the ranks depends on
the form, because DeepSpeed reads its `.deepspeed_env` file (DS_ENV_FILE) on its pdsh path only:

- pdsh:                the `.deepspeed_env` file; DeepSpeed's runner exports its lines on every node;
- local, `--no_ssh`, torchrun: the launcher process's own environment, which its ranks inherit;
- SLURM:               the script exports the same KEY=VALUE file before `srun` (tasks inherit it).

Anything that looks like a secret (token, password, key) is left out unless the user names it with
`--env KEY` or `--env KEY=VALUE`.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from emotune.atomic import write_text
from emotune.errors import EmotuneError
from emotune.sbatch import check_line_value

ENTRY_MODULE = "emotune.launch.train_entry"
PROBE_MODULE = "emotune.launch.probe"
# Forwarded to remote ranks when set here: these names, and every name with one of the prefixes
# (cluster network, hub and cache settings). Secret-looking names are never forwarded unasked.
FORWARD_ENV = ("PATH", "PYTHONPATH", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "CUDA_HOME",
               "OMP_NUM_THREADS", "XDG_CACHE_HOME", "TORCH_EXTENSIONS_DIR", "TORCH_HOME", "TRITON_CACHE_DIR",
               "TRANSFORMERS_OFFLINE", "TRANSFORMERS_CACHE", "TOKENIZERS_PARALLELISM", "DS_ACCELERATOR")
FORWARD_PREFIXES = ("HF_", "HUGGINGFACE_", "NCCL_", "GLOO_", "EMOTUNE_", "DS_BUILD_", "FI_", "UCX_")
SECRET = re.compile(r"TOKEN|SECRET|PASSW|CREDENTIAL|(^|_)(API_)?KEY($|_)|AUTH", re.IGNORECASE)
LAUNCHERS = ("deepspeed", "torchrun")
_HOST_LINE = re.compile(r"^(?P<host>[A-Za-z0-9_.\-]+)\s+slots=(?P<slots>[1-9][0-9]*)$")
_HOST = re.compile(r"[A-Za-z0-9_.\-]+|\[?[0-9A-Fa-f:.]+\]?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# DeepSpeed's pdsh runner puts a value with other characters in double quotes on the remote shell line,
# where $ ` " \ are still interpreted, and strips surrounding blanks: such values cannot arrive intact.
_PDSH_UNSAFE = re.compile(r"[$`\"\\]|^\s|\s$")


@dataclass
class LaunchPlan:
    config: str
    overrides: list[str] = field(default_factory=list)
    launcher: str = "deepspeed"
    nodes: int = 1
    procs_per_node: int | None = None  # None: the hostfile's slots, else 1
    hostfile: str | None = None
    node_rank: int | None = None  # set: run this node's share only (--no_ssh / torchrun per node)
    master_addr: str | None = None  # None: the hostfile's first host, else 127.0.0.1 (one node)
    master_port: int = 29500
    ssh_port: int | None = None
    ssh_check: bool = True  # DeepSpeed's plain-ssh reachability probe of the first host
    timeout_minutes: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    module: str = ENTRY_MODULE  # what every rank runs
    module_args: list[str] | None = None  # its arguments; None: CONFIG and the overrides

    def validate(self, slurm: bool = False) -> None:
        if slurm and (self.hostfile or self.node_rank is not None):
            raise EmotuneError("--hostfile and --node-rank have no meaning with --sbatch: SLURM picks the nodes")
        if self.launcher not in LAUNCHERS:
            raise EmotuneError(f"--launcher must be one of {LAUNCHERS}, got {self.launcher!r}")
        if self.nodes < 1 or (self.procs_per_node is not None and self.procs_per_node < 1):
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
            if not _HOST.fullmatch(self.master_addr):
                raise EmotuneError(f"--master-addr {self.master_addr!r}: not a host name or IP address")
        if self.nodes > 1 and not self.master_addr and not self.hostfile and not slurm:
            raise EmotuneError("several nodes need --master-addr (the first node's name; in SLURM, the first of `scontrol "
                               "show hostnames \"$SLURM_JOB_NODELIST\"`) or a --hostfile whose first host it is")
        if self.hostfile and not slurm:
            hosts = read_hostfile(self.hostfile)
            if len(hosts) != self.nodes:
                raise EmotuneError(f"hostfile {self.hostfile} lists {len(hosts)} hosts but --nodes is {self.nodes}")
            short = [h for h, slots in hosts if self.procs_per_node and slots < self.procs_per_node]
            if short:
                raise EmotuneError(f"hostfile {self.hostfile}: {short[0]} has fewer slots than --procs-per-node "
                                   f"{self.procs_per_node}")

    def procs(self) -> int:
        """Ranks per node: --procs-per-node, else the hostfile's slots (the same on every host), else 1."""
        if self.procs_per_node:
            return self.procs_per_node
        if self.hostfile:
            slots = {s for _, s in read_hostfile(self.hostfile)}
            if len(slots) > 1:
                raise EmotuneError(f"hostfile {self.hostfile}: hosts have different slots {sorted(slots)}; "
                                   "give --procs-per-node")
            return slots.pop()
        return 1

    def rendezvous(self) -> str:
        """The master's address: as given, else the hostfile's first host, else loopback (one node)."""
        if self.master_addr:
            return self.master_addr
        if self.hostfile:
            return read_hostfile(self.hostfile)[0][0]
        return "127.0.0.1"

    def uses_pdsh(self) -> bool:
        return self.launcher == "deepspeed" and bool(self.hostfile) and self.node_rank is None

    def form(self) -> str:
        """The launcher form in words (for the launch message)."""
        if self.launcher == "torchrun":
            return f"torchrun, node {self.node_rank or 0} of {self.nodes}"
        if self.uses_pdsh():
            return f"deepspeed over pdsh, {self.nodes} node(s)"
        if self.node_rank is not None and self.hostfile:
            return f"deepspeed --no_ssh, node {self.node_rank} of {self.nodes}"
        return "deepspeed, this node"


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


def env_int(name: str, environ: dict[str, str], low: int, high: int | None = None) -> int | None:
    """An integer setting read from the environment (MASTER_PORT, SLURM_NODEID, ...), or None when unset;
    anything else is one line naming the variable."""
    value = environ.get(name)
    if value is None or value == "":
        return None
    if not value.strip().isdigit() or int(value) < low or (high is not None and int(value) > high):
        bound = f"{low}..{high}" if high is not None else f"{low} or more"
        raise EmotuneError(f"{name}={value!r} (environment): expected a whole number in {bound}")
    return int(value)


def scheduler_node_rank(nodes: int, environ: dict[str, str] | None = None) -> tuple[int, str] | None:
    """This node's rank as a scheduler gives it: (rank, variable) from a SLURM job step (srun) or
    PET_NODE_RANK (torchrun's own variable, set by Kubeflow's PyTorchJob); None where there is none."""
    environ = dict(os.environ if environ is None else environ)
    if "SLURM_JOB_ID" in environ and "SLURM_NODEID" in environ:
        if "SLURM_STEP_ID" not in environ:  # the batch script itself runs on the first node only
            raise EmotuneError("in a SLURM batch script only the first node runs this: start it on every node with "
                               "`srun --ntasks-per-node=1 emotune launch ...` (or give --node-rank)")
        step_nodes = env_int("SLURM_STEP_NUM_NODES", environ, 1)
        if step_nodes is not None and step_nodes != nodes:
            raise EmotuneError(f"--nodes {nodes} but this SLURM job step runs on {step_nodes} node(s) "
                               "(SLURM_STEP_NUM_NODES)")
        tasks = env_int("SLURM_STEP_NUM_TASKS", environ, 1)
        if tasks is not None and step_nodes is not None and tasks != step_nodes:
            raise EmotuneError(f"this SLURM job step runs {tasks} tasks on {step_nodes} node(s): start one launcher "
                               "per node (srun --ntasks-per-node=1)")
        return env_int("SLURM_NODEID", environ, 0, nodes - 1), "SLURM_NODEID"
    rank = env_int("PET_NODE_RANK", environ, 0, nodes - 1)
    return (rank, "PET_NODE_RANK") if rank is not None else None


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


def rank_env(plan: LaunchPlan) -> dict[str, str]:
    """Every variable each rank must see beyond what its launcher sets (see the module's docstring)."""
    env = forwarded_env()
    env.update(plan.env)
    if plan.timeout_minutes:
        env["DEEPSPEED_TIMEOUT"] = str(plan.timeout_minutes)
    for key, value in env.items():
        if not _ENV_NAME.fullmatch(key) or "\n" in value or "\r" in value or "\0" in value:
            raise EmotuneError(f"environment variable {key!r} cannot be forwarded to the ranks "
                               "(a name must be [A-Za-z_][A-Za-z0-9_]*, a value one line)")
    return dict(sorted(env.items()))


def env_file_lines(plan: LaunchPlan, pdsh: bool = False) -> list[str]:
    """KEY=VALUE lines of the rank environment; for DeepSpeed's pdsh runner, only values it can pass intact."""
    env = rank_env(plan)
    if pdsh:
        for key, value in env.items():
            if _PDSH_UNSAFE.search(value):
                raise EmotuneError(f"{key}={value!r} cannot reach the other nodes intact: DeepSpeed's pdsh launcher "
                                   "passes it in double quotes (no $ ` \" \\ or surrounding blanks); change it, or "
                                   "start each node with --node-rank")
    return [f"{k}={v}" for k, v in env.items()]


def write_env_file(plan: LaunchPlan, path: str | os.PathLike, pdsh: bool = False) -> Path:
    """The KEY=VALUE file of the rank environment (`.deepspeed_env` for pdsh, `rank.env` for SLURM);
    readable by its owner only, since `--env HF_TOKEN` puts a secret in it."""
    out = write_text(path, "".join(line + "\n" for line in env_file_lines(plan, pdsh)))
    os.chmod(out, 0o600)
    return out


def entry_args(plan: LaunchPlan) -> list[str]:
    return list(plan.module_args) if plan.module_args is not None else [plan.config, *plan.overrides]


def build_command(plan: LaunchPlan) -> list[str]:
    """The launcher command (an argv list, never a shell string) for this node or the whole job."""
    plan.validate()
    procs = str(plan.procs())
    if plan.launcher == "torchrun":
        cmd = ["torchrun", "--nnodes", str(plan.nodes), "--nproc_per_node", procs,
               "--master_addr", plan.rendezvous(), "--master_port", str(plan.master_port)]
        if plan.nodes > 1:
            if plan.node_rank is None:  # the same command on every node would make each one node 0
                raise EmotuneError(f"torchrun on {plan.nodes} nodes needs --node-rank R on each node (or run it "
                                   "as a SLURM job step, whose SLURM_NODEID gives it)")
            cmd += ["--node_rank", str(plan.node_rank)]
        return cmd + ["-m", plan.module, *entry_args(plan)]
    # --num_gpus: ranks per node, also with a hostfile (whose slots say what a host has, not what to start);
    # on CPU-only machines it is the number of processes (docs/training.md, *DeepSpeed on CPU*).
    cmd = ["deepspeed"]
    if plan.hostfile:
        cmd += ["--hostfile", plan.hostfile, "--master_addr", plan.rendezvous()]
        if plan.procs_per_node:
            cmd += ["--num_gpus", procs]
        if plan.node_rank is not None:
            cmd += ["--no_ssh", "--node_rank", str(plan.node_rank)]
        else:
            if plan.ssh_port:  # DeepSpeed passes it to its ssh check and to pdsh (PDSH_SSH_ARGS_APPEND)
                cmd += ["--ssh_port", str(plan.ssh_port)]
            if not plan.ssh_check:
                cmd += ["--no_ssh_check"]
    else:
        cmd += ["--num_gpus", procs]
    cmd += ["--master_port", str(plan.master_port), "--module", plan.module, *entry_args(plan)]
    return cmd
