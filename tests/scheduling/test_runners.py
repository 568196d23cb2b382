"""The runner interface: every runner implements all of it, and the scheduler depends on nothing else."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from emotune.scheduling.runners.base import Runner
from emotune.scheduling.runners.local import LocalRunner
from emotune.scheduling.runners.slurm import SlurmRunner

SCHEDULER = Path(__file__).resolve().parents[2] / "emotune" / "scheduling" / "scheduler.py"


def _members(cls) -> dict[str, object]:
    return {n: v for n, v in vars(cls).items() if not n.startswith("_")} | dict.fromkeys(cls.__annotations__)


@pytest.mark.parametrize("runner", [LocalRunner, SlurmRunner])
def test_runner_implements_the_whole_interface(runner):
    for name, member in _members(Runner).items():
        assert hasattr(runner, name), f"{runner.__name__} lacks {name}"
        if callable(member):  # the same parameters, so the scheduler may call either alike
            assert list(inspect.signature(getattr(runner, name)).parameters) == \
                list(inspect.signature(member).parameters), f"{runner.__name__}.{name}"
    assert isinstance(runner.name, str) and isinstance(runner.detached, bool)


def test_scheduler_uses_only_the_interface():
    """No `runner.name == "slurm"` (or any other question about which runner it has): every runner-specific
    step is a method of the runner, so a new runner needs no change in the scheduler."""
    tree = ast.parse(SCHEDULER.read_text())
    interface = set(_members(Runner))
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute) and node.value.attr == "runner"}
    assert used and used <= interface, used - interface
    compared = [ast.unparse(node) for node in ast.walk(tree) if isinstance(node, ast.Compare)
                and any(isinstance(c, ast.Constant) and c.value in ("local", "slurm") for c in node.comparators)]
    assert compared == []
