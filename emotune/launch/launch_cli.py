"""`emotune launch CONFIG [key=value ...] [options]`: start training on 1 GPU, N GPUs, N nodes or SLURM.

    emotune launch configs/train/tiny-cpu.yaml --procs-per-node 2                 # one node, 2 ranks
    emotune launch cfg.yaml --nodes 2 --procs-per-node 8 --hostfile hosts          # pdsh over ssh
    emotune launch cfg.yaml --nodes 2 --procs-per-node 8 --hostfile hosts --node-rank 1   # this node only
    emotune launch cfg.yaml --launcher torchrun --nodes 2 --procs-per-node 8 --master-addr node-001 --node-rank 1
    emotune launch cfg.yaml --nodes 2 --procs-per-node 8 --sbatch runs/x/slurm --time 2-00:00:00 --partition gpu
    emotune launch cfg.yaml --procs-per-node 8 output_dir=/runs/x --probe       # every rank says what it sees
    emotune launch ... --dry-run                                                   # print, run nothing

Positionals, options and key=value overrides may come in any order.

environment:
  MASTER_ADDR, MASTER_PORT   defaults of --master-addr / --master-port
  SLURM_NODEID               torchrun on several nodes without --node-rank, inside an srun job step
  PET_NODE_RANK              the same elsewhere (torchrun's own variable, e.g. Kubeflow's PyTorchJob)
  DS_ENV_FILE is set by emotune; DeepSpeed reads it on its pdsh path only (see docs/cluster.md).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from emotune.atomic import write_text
from emotune.errors import ArgumentParser, EmotuneError
from emotune.launch.launcher import (
    PROBE_MODULE,
    LaunchPlan,
    build_command,
    env_file_lines,
    env_int,
    rank_env,
    scheduler_node_rank,
    write_env_file,
)
from emotune.launch.slurm_script import SlurmOptions, sbatch_eval_script, sbatch_train_script
from emotune.sbatch import check_line_value


def parser() -> ArgumentParser:
    lines = __doc__.splitlines()
    ap = ArgumentParser(prog="emotune launch", description=lines[0], epilog="\n".join(lines[2:]),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="training run config (YAML), a path or a shipped config's name")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the run config")
    ap.add_argument("--launcher", default="deepspeed", choices=["deepspeed", "torchrun"])
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--procs-per-node", type=int, help="ranks (GPUs) per node; default: the hostfile's slots, else 1")
    ap.add_argument("--hostfile", help="DeepSpeed hostfile: 'HOST slots=N' lines, the first host is the master")
    ap.add_argument("--node-rank", type=int, help="start only this node's ranks (deepspeed --no_ssh / torchrun); "
                    "torchrun takes it from SLURM_NODEID or PET_NODE_RANK when not given")
    ap.add_argument("--master-addr", help="rendezvous host (default: $MASTER_ADDR, else the hostfile's first host, "
                    "else 127.0.0.1 on one node)")
    ap.add_argument("--master-port", type=int, help="rendezvous port (default: $MASTER_PORT, else 29500)")
    ap.add_argument("--ssh-port", type=int, help="ssh port of the other nodes (pdsh)")
    ap.add_argument("--no-ssh-check", action="store_true",
                    help="skip DeepSpeed's plain-ssh probe (when ssh options come through PDSH_SSH_ARGS_APPEND)")
    ap.add_argument("--timeout-minutes", type=int, help="process-group timeout of every rank (DEEPSPEED_TIMEOUT)")
    ap.add_argument("--env", action="append", default=[], metavar="KEY[=VALUE]",
                    help="a variable for every rank (repeatable); KEY alone forwards its value from here (--env HF_TOKEN)")
    ap.add_argument("--env-file", default=".emotune/deepspeed_env",
                    help="pdsh only: where the .deepspeed_env file DeepSpeed exports on every node is written")
    ap.add_argument("--probe", action="store_true", help="start every rank with a probe instead of training: each "
                    "writes OUTPUT_DIR/launch-probe/rank-N.json and prints what it sees (rank, world size, master, "
                    "timeout, the --env values); seconds, no model")
    ap.add_argument("--dry-run", action="store_true", help="print the command and the ranks' environment, run nothing")
    slurm = ap.add_argument_group("SLURM (with --sbatch; the names are sbatch's)")
    slurm.add_argument("--sbatch", metavar="DIR", help="write DIR/train.sbatch (and eval.sbatch) instead of running")
    slurm.add_argument("--gpus-per-node", type=int, help="GPUs to request per node (default --procs-per-node; 0 on CPU)")
    slurm.add_argument("--time", help="time limit, e.g. 2-00:00:00 or 90 (minutes)")
    slurm.add_argument("--partition", help="partition (queue)")
    slurm.add_argument("--account", help="account to charge")
    slurm.add_argument("--cpus-per-task", type=int, help="CPUs per node's task (its launcher and all its ranks)")
    slurm.add_argument("--exclusive", action="store_true", help="whole nodes only")
    slurm.add_argument("--sbatch-arg", action="append", default=[], metavar="OPTION",
                       help="any other #SBATCH line, repeatable: --sbatch-arg=--qos=high --sbatch-arg=--mem=0")
    slurm.add_argument("--eval-command", help="the evaluation command of eval.sbatch (one quoted string)")
    return ap


def _env_items(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key:
            raise EmotuneError(f"--env expects KEY=VALUE or KEY, got {item!r}")
        if not sep:  # forward this variable's value, secret or not: the user asked for it by name
            if key not in os.environ:
                raise EmotuneError(f"--env {key}: no such variable is set here")
            value = os.environ[key]
        env[key] = value
    return env


def parse(argv: list[str]) -> tuple[argparse.Namespace, LaunchPlan]:
    args = parser().parse_args(argv)
    slurm_only = [name for name in ("gpus_per_node", "time", "partition", "account", "cpus_per_task", "eval_command")
                  if getattr(args, name) is not None] + (["exclusive"] if args.exclusive else []) \
        + (["sbatch_arg"] if args.sbatch_arg else [])
    if slurm_only and not args.sbatch:
        raise EmotuneError(f"--{slurm_only[0].replace('_', '-')} only applies to the SLURM script: add --sbatch DIR")
    if args.gpus_per_node is not None and args.gpus_per_node < 0:
        raise EmotuneError(f"--gpus-per-node {args.gpus_per_node}: must be 0 or more")
    master_port = args.master_port if args.master_port is not None else env_int("MASTER_PORT", os.environ, 1, 65535)
    master_addr = args.master_addr or os.environ.get("MASTER_ADDR") or None
    if master_addr is not None and not args.master_addr:
        check_line_value(master_addr, "MASTER_ADDR (environment)")
    node_rank, rank_from = args.node_rank, None
    if node_rank is None and args.launcher == "torchrun" and args.nodes > 1 and not args.sbatch:
        node_rank, rank_from = scheduler_node_rank(args.nodes) or (None, None)
    from emotune.train.config import load_config

    cfg = load_config(args.config, args.overrides)  # a bad run config (yours or a shipped one) fails here, not on every rank
    env = _env_items(args.env)
    plan = LaunchPlan(config=args.config, overrides=args.overrides, launcher=args.launcher, nodes=args.nodes,
                      procs_per_node=args.procs_per_node, hostfile=args.hostfile, node_rank=node_rank,
                      master_addr=master_addr, master_port=master_port or 29500, ssh_port=args.ssh_port,
                      ssh_check=not args.no_ssh_check, timeout_minutes=args.timeout_minutes, env=env)
    if args.probe:
        plan.module = PROBE_MODULE
        plan.module_args = [str(Path(cfg.output_dir).resolve() / "launch-probe"), *env]
    args.rank_from = rank_from
    return args, plan


def executable(cmd: list[str]) -> list[str]:
    """Run the launcher with this interpreter, so an un-activated venv works the same."""
    if cmd[0] == "deepspeed":
        return [sys.executable, "-m", "deepspeed.launcher.runner", *cmd[1:]]
    if cmd[0] == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", *cmd[1:]]
    return cmd


def _words(command: str) -> list[str]:
    try:
        words = shlex.split(command)
    except ValueError as err:
        raise EmotuneError(f"--eval-command {command!r}: {err}") from None
    if not words:
        raise EmotuneError("--eval-command is empty")
    return words


def write_sbatch(args: argparse.Namespace, plan: LaunchPlan) -> int:
    out = Path(args.sbatch)
    plan.validate(slurm=True)
    gpus = args.gpus_per_node if args.gpus_per_node is not None else plan.procs()
    extra = SlurmOptions(args.time, args.partition, args.account, args.cpus_per_task, args.exclusive,
                         args.sbatch_arg).lines()
    run_dir = str(out.resolve())
    train = sbatch_train_script(plan, run_dir, gpus, extra=extra)
    env_lines = env_file_lines(plan)
    evaluate = (sbatch_eval_script(_words(args.eval_command), run_dir, gpus=min(gpus, 1), extra=extra,
                                   env_file=str(Path(run_dir) / "rank.env")) if args.eval_command else None)
    if args.dry_run:
        print("# rank.env (exported by the script before srun):")
        print("\n".join(f"#   {line}" for line in env_lines))
        print(train)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    write_env_file(plan, out / "rank.env")
    write_text(out / "train.sbatch", train)
    print(f"wrote {out / 'train.sbatch'} ({plan.launcher}, {plan.nodes} node(s) x {plan.procs()} ranks) and "
          f"{out / 'rank.env'} (every rank's environment: {', '.join(rank_env(plan))})")
    if evaluate:
        write_text(out / "eval.sbatch", evaluate)
        print(f"wrote {out / 'eval.sbatch'}  (submit with --dependency=afterok:<train job id>)")
    return 0


def main(argv: list[str]) -> int:
    args, plan = parse(argv)
    if args.sbatch:
        return write_sbatch(args, plan)
    cmd = build_command(plan)
    pdsh = plan.uses_pdsh()
    env_lines = env_file_lines(plan, pdsh=pdsh)
    env_path = Path(args.env_file).resolve()
    how = (f"through {env_path}, which DeepSpeed's runner exports on every node (DS_ENV_FILE)" if pdsh
           else "from this launcher's environment, which the ranks inherit")
    rank = f" (node rank from {args.rank_from})" if args.rank_from else ""
    if args.dry_run:
        print(f"# {plan.form()}{rank}; every rank gets, {how}:")
        print("\n".join(f"#   {line}" for line in env_lines))
        prefix = f"DS_ENV_FILE={shlex.quote(str(env_path))} " if pdsh else ""
        print(prefix + shlex.join(cmd))
        return 0
    env = dict(os.environ, **rank_env(plan))
    if pdsh:
        env_path.parent.mkdir(parents=True, exist_ok=True)
        write_env_file(plan, env_path, pdsh=True)
        env["DS_ENV_FILE"] = str(env_path)
    names = ", ".join(line.split("=", 1)[0] for line in env_lines)
    print(f"emotune launch: {plan.form()}{rank}; every rank gets {names} {how} "
          "(no secrets unless named with --env KEY)", file=sys.stderr)
    return subprocess.run(executable(cmd), env=env).returncode
