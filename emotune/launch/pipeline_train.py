"""Training a pipeline's runs (emotune.launch.pipeline): each run's command (this interpreter; a free port
for a single-node DeepSpeed launch), its `{run:NAME}` references filled from earlier runs, and one
training process at a time beside the schedulers that evaluate what it writes."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from emotune.errors import EmotuneError


def resolve_command(command: list[str]) -> list[str]:
    """Launchers and `emotune` run with this interpreter, so an un-activated venv works the same. A
    single-node `deepspeed` launch without --master_port gets a free port: its default 29500 is taken by
    any other DeepSpeed job on the machine (a second pipeline, a test), and the launch would fail."""
    head = {"emotune": ["-m", "emotune.cli"], "deepspeed": ["-m", "deepspeed.launcher.runner"],
            "torchrun": ["-m", "torch.distributed.run"]}.get(command[0])
    rest = list(command[1:])
    multi_node = any(a.split("=")[0] in ("--hostfile", "-H", "--master_addr", "--num_nodes") for a in rest)
    if command[0] == "deepspeed" and not multi_node and not any(a.split("=")[0] == "--master_port" for a in rest):
        rest = ["--master_port", str(free_port()), *rest]
    return [sys.executable, *head, *rest] if head else list(command)


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def last_checkpoint(run_dir: Path, name: str) -> str:
    from emotune.scheduling.discovery import discover

    found = discover(run_dir)
    if not found:
        raise EmotuneError(f"pipeline: {{run:{name}}} names a run without a complete checkpoint in {run_dir}")
    return str(max(found, key=lambda c: c.step).model_path)


def fill_run_refs(items: list[str], done: dict[str, Path]) -> list[str]:
    out = []
    for item in items:
        for ref in re.findall(r"\{run:([^}]+)\}", item):
            if ref not in done:
                raise EmotuneError(f"pipeline: {{run:{ref}}} must name an earlier run (have: {sorted(done) or 'none'})")
            item = item.replace("{run:" + ref + "}", last_checkpoint(done[ref], ref))
        out.append(item)
    return out


def train_beside(command: list[str], schedulers: list, poll: float) -> int:
    """Run one training process while the schedulers evaluate what lands; its exit status."""
    train = subprocess.Popen(command)
    try:
        while train.poll() is None:
            for sched in schedulers:
                sched.tick()
            sleep_while(train, poll)
    except KeyboardInterrupt:
        train.terminate()
        train.wait()
        raise
    return train.returncode


def sleep_while(proc: subprocess.Popen, seconds: float) -> None:
    deadline = time.time() + seconds
    while proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
