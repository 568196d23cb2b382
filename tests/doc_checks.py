"""How tests/test_docs.py checks a doc command it cannot run here (no GPU, cluster, container runtime or hub):
bash runs the command with the programs it would start replaced by recorders, then each recorded call is
checked by the program's own argument parser, emotune's --dry-run, or, for containers and `bash -c`
scripts, the command inside."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
from pathlib import Path
from unittest import mock

from doc_blocks import REPO, SLURM_ENV, Command, run_bash

# Programs whose calls a checked command records instead of running: bash expands the command exactly as a
# user's shell would (quotes, $(...), braces), then each recorded call is checked by the program's own
# argument parser (emotune's, DeepSpeed's runner, torchrun's) or, for containers, the command inside.
CAPTURED = ("emotune", "deepspeed", "torchrun", "docker", "srun", "apptainer")


class _Parsed(Exception):
    """Raised by the patched parser once a command's arguments parsed: the command runs no further."""

    def __init__(self, prog: str, namespace: argparse.Namespace):
        super().__init__(prog)
        self.prog, self.namespace = prog, namespace


def parse_only(argv: list[str]) -> tuple[int, str, argparse.Namespace | None]:
    """Run `emotune ARGV` until its argument parser has parsed, in this process; nothing after that runs.

    Every emotune command parses with `emotune.errors.ArgumentParser`, so patching its two entry points
    stops each command right after the parse. Returns (exit status, stderr, the parsed namespace or None):
    status 0 with a namespace when the arguments parse, 2 with the command's one-line error otherwise.
    """
    from emotune import cli
    from emotune.errors import ArgumentParser

    def stop(orig):
        def parse(self, *args, **kwargs):
            raise _Parsed(self.prog, orig(self, *args, **kwargs))
        return parse

    err, out = io.StringIO(), io.StringIO()
    # Wrap whatever the class's own methods are (emotune's parse_args may itself parse intermixed).
    with mock.patch.object(ArgumentParser, "parse_args", stop(ArgumentParser.parse_args)), \
            mock.patch.object(ArgumentParser, "parse_intermixed_args", stop(ArgumentParser.parse_intermixed_args)), \
            contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = cli.main(list(argv))
        except _Parsed as parsed:
            return 0, "", parsed.namespace
        except SystemExit as exc:  # --help
            return int(exc.code or 0), err.getvalue(), None
    message = err.getvalue().strip() or f"emotune {shlex.join(argv)}: returned {rc} before parsing its arguments"
    return (rc if rc else 1), message, None


def captured_calls(command: str, cwd: Path, env: dict) -> tuple[int, str, list[list[str]]]:
    """Run COMMAND in bash with the CAPTURED programs replaced by functions that record their arguments."""
    record = cwd / ".doc-calls"
    record.write_bytes(b"")
    shims = "".join(f'{name}() {{ printf "%s\\0" {name} "$@" >> "$DOC_CALLS"; printf "\\001" >> "$DOC_CALLS"; }}\n'
                    for name in CAPTURED)
    env = dict(env, DOC_CALLS=str(record), PATH=f"{cwd / 'bin'}{os.pathsep}{env['PATH']}")
    proc = run_bash(shims + command, cwd, env, timeout=60)
    calls = [[a.decode() for a in rec.split(b"\0")[:-1]] for rec in record.read_bytes().split(b"\x01")[:-1]]
    return proc.returncode, proc.stderr.strip(), calls


def _mounts(pairs: list[str]) -> list[tuple[str, str]]:
    out = []
    for pair in pairs:
        for item in pair.split(","):
            host, _, inside = item.partition(":")
            if inside:
                out.append((inside.split(":")[0].rstrip("/"), host.rstrip("/")))
    return out


def _map_paths(argv: list[str], mounts: list[tuple[str, str]], sandbox: Path) -> list[str]:
    """Container paths -> the host paths mounted there; `/shared/...` (the docs' shared file system) ->
    the sandbox's `shared/`."""
    def one(arg: str) -> str:
        key, eq, value = arg.rpartition("=") if "=" in arg and not arg.startswith("-") else ("", "", arg)
        for inside, host in mounts:
            if value == inside or value.startswith(inside + "/"):
                value = host + value[len(inside):]
                break
        if value.startswith("/shared/"):
            value = str(sandbox / value[1:])
        return key + eq + value
    return [one(a) for a in argv]


DOCKER_FLAGS = {"--rm", "-d", "--detach", "-i", "-t", "-it", "--init", "--privileged", "--interactive", "--tty"}
EMOTUNE_MODULES = ("emotune", "emotune.launch.train_entry", "emotune.train.recipe")


def check_call(call: list[str], sandbox: Path, env: dict) -> str | None:
    """Check one recorded call; the problem, or None. Recurses into container and `bash -c` commands."""
    name, args = call[0], call[1:]
    if name == "emotune":
        return check_emotune(args, sandbox, env)
    if name == "deepspeed":
        from deepspeed.launcher.runner import parse_args

        try:
            ns = parse_args(args)
        except SystemExit:
            return f"deepspeed rejects its arguments: {shlex.join(args)}"
        if not ns.module:
            return f"deepspeed {ns.user_script}: the docs start emotune with --module"
        return _check_module(ns.user_script, ns.user_args, sandbox, env, local_rank=not ns.no_local_rank)
    if name == "torchrun":
        from torch.distributed.run import get_args_parser

        try:
            ns = get_args_parser().parse_args(args)
        except SystemExit:
            return f"torchrun rejects its arguments: {shlex.join(args)}"
        if not ns.module:
            return f"torchrun {ns.training_script}: the docs start emotune with -m"
        return _check_module(ns.training_script, ns.training_script_args, sandbox, env, local_rank=False)
    if name == "docker":
        return _check_docker(args, sandbox, env)
    if name in ("srun", "apptainer"):
        # pyxis' --container-mounts and Apptainer's --bind (`srun apptainer exec --bind ...`): HOST:INSIDE,...
        flags = ("--container-mounts", "--bind")
        mounts = _mounts([a.split("=", 1)[1] for a in args if a.split("=", 1)[0] in flags and "=" in a]
                         + [args[i + 1] for i, a in enumerate(args[:-1]) if a in flags])
        if "bash" in args and args[args.index("bash") + 1:args.index("bash") + 2] == ["-c"]:
            script = args[args.index("bash") + 2]
            # On the node: SLURM's variables, and MASTER_ADDR as the script's `export` line sets it.
            rc, err, calls = captured_calls(script, sandbox, dict(env, **SLURM_ENV, MASTER_ADDR="node-001"))
            if rc or not calls:
                return f"{name}'s bash -c script: exit {rc}, {len(calls)} calls: {err}"
            for inner in calls:
                problem = check_call(_map_paths(inner, mounts, sandbox), sandbox, dict(env, **SLURM_ENV, MASTER_ADDR="node-001"))
                if problem:
                    return problem
            return None
        return f"{name}: no `bash -c SCRIPT` to check in {shlex.join(args)}"
    return f"{name}: no check for this program"


def _check_module(module: str, user_args: list[str], sandbox: Path, env: dict, local_rank: bool) -> str | None:
    import importlib.util

    if module not in EMOTUNE_MODULES or importlib.util.find_spec(module) is None:
        return f"module {module}: not one of emotune's entry points {EMOTUNE_MODULES}"
    # DeepSpeed's launcher hands each rank `--local_rank=N` before the user's arguments (unless --no_local_rank).
    extra = ["--local_rank=0"] if local_rank else []
    argv = [*extra, *user_args] if module == "emotune" else ["train", *extra, *user_args]
    return check_emotune(argv, sandbox, env)


def _check_docker(args: list[str], sandbox: Path, env: dict) -> str | None:
    if args[:1] == ["build"]:
        declared = set(re.findall(r"^ARG\s+(\w+)", (REPO / "Dockerfile").read_text(), re.M))
        given = [args[i + 1].split("=")[0] for i, a in enumerate(args[:-1]) if a == "--build-arg"]
        unknown = [g for g in given if g not in declared]
        if unknown:
            return f"docker build --build-arg {', '.join(unknown)}: the Dockerfile declares no such ARG"
        if args[-1] != ".":
            return "docker build: the docs build from the repository's root (context `.`)"
        return None
    if args[:1] != ["run"]:
        return f"docker {args[:1]}: no check for this docker command"
    i, mounts = 1, []
    while i < len(args) and args[i].startswith("-"):
        flag = args[i]
        if flag in ("-v", "--volume"):
            mounts += _mounts([args[i + 1]])
        i += 1 if flag in DOCKER_FLAGS or "=" in flag else 2
    image, inner = args[i], _map_paths(args[i + 1:], mounts, sandbox)
    if image.split(":")[0].split("/")[-1] != "emotune":
        return f"docker run {image}: not the emotune image"
    # The image's entry point runs a launcher or shell as is, anything else as an emotune command.
    first = inner[0] if inner else "--help"
    return check_call(inner if first in ("deepspeed", "torchrun") else ["emotune", *inner], sandbox, env)


def check_emotune(argv: list[str], sandbox: Path, env: dict) -> str | None:
    """`emotune ARGV` parses (in this process, with the environment ENV the command would see); a launch also passes its own --dry-run (it validates the run config); a train's
    run config loads with its overrides; no argument names a file inside the source tree."""
    inside = [a for a in argv if re.match(r"^(\w+=)?emotune/", a)]
    if inside:
        return f"{inside[0]}: a path inside the source tree, missing from an installed package (use configs/...)"
    with chdir(sandbox), mock.patch.dict(os.environ, env, clear=True):
        rc, err, ns = parse_only(argv)
        if rc:
            return f"emotune {shlex.join(argv)}: exit {rc}: {err}"
        command = [a for a in argv if not a.startswith("--local_rank")][0] if argv else ""
        if command == "launch" and "--dry-run" not in argv:
            out, errs = io.StringIO(), io.StringIO()
            from emotune import cli

            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(errs):
                rc = cli.main([*argv, "--dry-run"])
            if rc:
                return f"emotune {shlex.join(argv)} --dry-run: exit {rc}: {errs.getvalue().strip()}"
        if command in ("eval", "watch") and ns is not None:
            problem = _check_task_names(ns)
            if problem:
                return f"emotune {shlex.join(argv)}: {problem}"
        if command == "pipeline" and ns is not None:
            problem = _check_pipeline(ns)
            if problem:
                return f"emotune {shlex.join(argv)}: {problem}"
        if command == "train" and ns is not None:
            from emotune.errors import EmotuneError
            from emotune.train.config import load_config

            try:
                load_config(ns.config, ns.overrides)
            except EmotuneError as err:
                return f"emotune {shlex.join(argv)}: {err}"
    return None


def _check_task_names(ns: argparse.Namespace) -> str | None:
    """A shipped suite or task named by `--suite` / `--tasks` exists (files of the user's own are not checked)."""
    from emotune.errors import EmotuneError
    from emotune.tasks.files import load_task
    from emotune.tasks.suites import load_suite

    files = (".yaml", ".yml")
    try:
        if isinstance(getattr(ns, "suite", None), str) and not ns.suite.endswith(files):
            load_suite(ns.suite)
        if getattr(ns, "tasks", None) and getattr(ns, "evaluator", None) != "lm_eval":
            for name in ns.tasks.split(","):
                if not name.endswith(files):
                    load_task(name)
    except EmotuneError as err:
        return str(err)
    return None


def _check_pipeline(ns: argparse.Namespace) -> str | None:
    """The pipeline config loads with its overrides, and so does each run's training config (as the
    pipeline itself checks them before it starts anything)."""
    from emotune.errors import EmotuneError
    from emotune.launch.pipeline import expand_runs, load_pipeline_config
    from emotune.train.config import load_config

    try:
        for run in expand_runs(load_pipeline_config(ns.config, ns.overrides)):
            overrides = [o for o in run.train.overrides if "{run:" not in o]
            load_config(run.train.config, overrides + ([f"output_dir={run.run_dir}"] if run.run_dir else []))
    except EmotuneError as err:
        return str(err)
    return None


@contextlib.contextmanager
def chdir(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def after_run(command: Command, sandbox: Path) -> None:
    """What a run command wrote, checked: an `emotune launch --sbatch ... --eval-command` pair of scripts
    must evaluate the folder the training writes (else the eval job finds nothing and exits 0)."""
    argv = shlex.split(command.key)
    if argv[:2] != ["emotune", "launch"] or "--sbatch" not in argv or "--eval-command" not in argv:
        return
    from emotune.train.config import load_config

    with chdir(sandbox):
        rc, err, ns = parse_only(argv[1:])
        assert rc == 0, err
        output_dir = sandbox / load_config(ns.config, ns.overrides).output_dir
    script = (sandbox / ns.sbatch / "eval.sbatch").read_text()
    assert f"cd {shlex.quote(str(sandbox))}" in script or f"cd {sandbox}" in script, "eval.sbatch runs elsewhere"
    watch = shlex.split([line for line in script.splitlines() if line.strip()][-1])
    assert watch[:2] == ["emotune", "watch"], f"eval.sbatch's last line is not `emotune watch`: {watch}"
    run_dir = sandbox / [a for a in watch[2:] if not a.startswith("-")][0]
    assert run_dir.resolve() == output_dir.resolve(), (
        f"{command.block.path}:{command.line}: the eval job watches {run_dir.relative_to(sandbox)}, the training "
        f"writes {output_dir.relative_to(sandbox)}: it would evaluate nothing")
