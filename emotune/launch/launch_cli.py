"""`emotune launch CONFIG [key=value ...]`: start training on 1 GPU, N GPUs, N nodes or SLURM.

    emotune launch configs/train/tiny-cpu.yaml --procs-per-node 2                 # one node, 2 ranks
    emotune launch cfg.yaml --nodes 2 --procs-per-node 8 --hostfile hosts          # pdsh over ssh
    emotune launch cfg.yaml --nodes 2 --procs-per-node 8 --hostfile hosts --node-rank 1   # this node only
    emotune launch cfg.yaml --nodes 2 --procs-per-node 8 --sbatch runs/x/slurm     # write sbatch scripts
    emotune launch ... --dry-run                                                   # print, run nothing
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
    LaunchPlan,
    build_command,
    env_file_lines,
    sbatch_eval_script,
    sbatch_train_script,
    write_env_file,
)


def parse(argv: list[str]) -> tuple[argparse.Namespace, LaunchPlan]:
    ap = ArgumentParser(prog="emotune launch", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n".join(__doc__.splitlines()[2:]))
    ap.add_argument("config", help="training run config (YAML)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the run config")
    ap.add_argument("--launcher", default="deepspeed", choices=["deepspeed", "torchrun"])
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--procs-per-node", type=int, default=1, help="GPUs per node (processes per node on CPU)")
    ap.add_argument("--hostfile", help="DeepSpeed hostfile: 'HOST slots=N' lines")
    ap.add_argument("--node-rank", type=int, help="start only this node's ranks (deepspeed --no_ssh / torchrun)")
    ap.add_argument("--master-addr", default=os.environ.get("MASTER_ADDR"),
                    help="rendezvous host (default: the hostfile's first host; 127.0.0.1 on one node)")
    ap.add_argument("--master-port", type=int, default=int(os.environ.get("MASTER_PORT", "29500")))
    ap.add_argument("--ssh-port", type=int, help="ssh port of the other nodes (pdsh)")
    ap.add_argument("--no-ssh-check", action="store_true",
                    help="skip DeepSpeed's plain-ssh probe (when ssh options come through PDSH_SSH_ARGS_APPEND)")
    ap.add_argument("--timeout-minutes", type=int, help="process-group timeout (DEEPSPEED_TIMEOUT)")
    ap.add_argument("--env", action="append", default=[], metavar="KEY[=VALUE]",
                    help="extra variable for every rank; KEY alone forwards its value from here (e.g. --env HF_TOKEN)")
    ap.add_argument("--env-file", default=".emotune/deepspeed_env", help="where the .deepspeed_env file is written")
    ap.add_argument("--sbatch", metavar="DIR", help="write train.sbatch (and eval.sbatch) to DIR instead of running")
    ap.add_argument("--gpus-per-node", type=int, help="for --sbatch: GPUs to request per node (0 on CPU clusters)")
    ap.add_argument("--eval-command", help="for --sbatch: the evaluation command of eval.sbatch (quoted string)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands and the environment file, run nothing")
    args = ap.parse_args(argv)
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not key:
            raise EmotuneError(f"--env expects KEY=VALUE or KEY, got {item!r}")
        if not sep:  # forward this variable's value, secret or not: the user asked for it by name
            if key not in os.environ:
                raise EmotuneError(f"--env {key}: no such variable is set here")
            value = os.environ[key]
        env[key] = value
    from emotune.train.config import load_config

    load_config(args.config, args.overrides)  # a bad run config (yours or a shipped one) fails here, not on every rank
    if args.gpus_per_node is not None and args.gpus_per_node < 0:
        raise EmotuneError(f"--gpus-per-node {args.gpus_per_node}: must be 0 or more")
    plan = LaunchPlan(config=args.config, overrides=args.overrides, launcher=args.launcher, nodes=args.nodes,
                      procs_per_node=args.procs_per_node, hostfile=args.hostfile, node_rank=args.node_rank,
                      master_addr=args.master_addr, master_port=args.master_port, ssh_port=args.ssh_port, ssh_check=not args.no_ssh_check,
                      timeout_minutes=args.timeout_minutes, env=env)
    return args, plan


def executable(cmd: list[str]) -> list[str]:
    """Run the launcher with this interpreter, so an un-activated venv works the same."""
    if cmd[0] == "deepspeed":
        return [sys.executable, "-m", "deepspeed.launcher.runner", *cmd[1:]]
    if cmd[0] == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", *cmd[1:]]
    return cmd


def main(argv: list[str]) -> int:
    args, plan = parse(argv)
    if args.sbatch:
        out = Path(args.sbatch)
        gpus = args.gpus_per_node if args.gpus_per_node is not None else plan.procs_per_node
        train = sbatch_train_script(plan, str(out.resolve()), gpus)
        if args.dry_run:
            print(train)
            return 0
        out.mkdir(parents=True, exist_ok=True)
        write_env_file(plan, out / ".deepspeed_env")
        write_text(out / "train.sbatch", train)
        print(f"wrote {out / 'train.sbatch'}")
        if args.eval_command:
            write_text(out / "eval.sbatch", sbatch_eval_script(shlex.split(args.eval_command), str(out.resolve()), gpus=min(gpus, 1)))
            print(f"wrote {out / 'eval.sbatch'}  (submit with --dependency=afterok:<train job id>)")
        return 0
    cmd = build_command(plan)
    env_path = Path(args.env_file).resolve()
    if args.dry_run:
        print("# .deepspeed_env (exported on every node):")
        print("\n".join(f"#   {line}" for line in env_file_lines(plan)) or "#   (empty)")
        print(f"DS_ENV_FILE={shlex.quote(str(env_path))} {shlex.join(cmd)}")
        return 0
    env_path.parent.mkdir(parents=True, exist_ok=True)
    write_env_file(plan, env_path)
    names = ", ".join(line.split("=", 1)[0] for line in env_file_lines(plan))
    print(f"emotune launch: {env_path} exports to every rank: {names or 'nothing'} "
          "(no secrets unless named with --env KEY)", file=sys.stderr)
    env = dict(os.environ, DS_ENV_FILE=str(env_path), **plan.env)
    return subprocess.run(executable(cmd), env=env).returncode
