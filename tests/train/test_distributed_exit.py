"""`emotune train` leaves its process group before the process exits: a rank that exits with a live gloo group
can abort in the C++ teardown (status -6, "terminate called without an active exception") after a finished run,
which the launcher reports as a failed run (seen once in `tests/e2e/test_crash_resume.py` under load)."""

import os
import subprocess
import sys
import types

from emotune.train import recipe


def test_finish_distributed_destroys_the_group_and_is_a_no_op_without_one():
    # a fresh interpreter: an earlier test in this worker process may still hold a process group of its own
    code = """
import os
for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
    os.environ.pop(key, None)
import torch.distributed as dist
from emotune.train import distributed
assert not dist.is_initialized()
distributed.finish_distributed()  # nothing to leave
assert distributed.setup_distributed() == (0, 1) and dist.is_initialized()
distributed.finish_distributed()
assert not dist.is_initialized()
assert distributed.setup_distributed() == (0, 1)  # a later run in this process can join a new group
distributed.finish_distributed()
assert not dist.is_initialized()
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-2000:] + proc.stderr[-3000:]


def test_the_train_command_leaves_the_group_after_a_finished_run_only(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(recipe, "load_config", lambda config, overrides: types.SimpleNamespace(output_dir=str(tmp_path)))
    monkeypatch.setattr(recipe, "finish_distributed", lambda: calls.append("finish"))
    monkeypatch.setattr("emotune.hub.offline_if_unreachable", lambda: None)
    monkeypatch.setattr(recipe, "run", lambda cfg: types.SimpleNamespace(checkpoints=[tmp_path / "checkpoint-1"],
                                                                         step=1, reexported=[]))
    assert recipe.main(["run.yaml"]) == 0 and calls == ["finish"]

    def fails(cfg):
        raise RuntimeError("a rank failed")

    monkeypatch.setattr(recipe, "run", fails)
    try:
        recipe.main(["run.yaml"])
    except RuntimeError:
        pass
    assert calls == ["finish"]  # a failing run does not wait at a barrier the other ranks may never reach
