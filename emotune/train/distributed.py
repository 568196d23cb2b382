"""The process group: join the launcher's, or make a one-rank group when started alone; a barrier and a
float64 all-reduce that are no-ops without a group (so every step of the recipe runs the same on 1 rank)."""

from __future__ import annotations

import importlib
import os
import socket

import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_distributed() -> tuple[int, int]:
    """Join the launcher's process group, or make a one-rank group when started alone."""
    if "RANK" not in os.environ and "OMPI_COMM_WORLD_RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())))
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu" and os.environ.get("EMOTUNE_BUILD_SHM_COMM", "0") != "1":
        # On CPU, the first init JIT-compiles a shared-memory kernel (~1 min) that only inference
        # all-reduce uses; training collectives go through gloo. Skip it (see docs/training.md).
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    deepspeed.init_distributed()
    import torch.distributed as dist

    return dist.get_rank(), dist.get_world_size()


def finish_distributed() -> None:
    """Leave the process group before the interpreter exits (PyTorch asks for it on a normal exit). A rank that
    exits with its gloo group alive can abort in the C++ teardown ("terminate called without an active
    exception", status -6) after the run finished and saved: the launcher then reports a failed run."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    dist.barrier()  # no rank tears down while another still talks to it
    import deepspeed.comm as ds_comm

    ds_comm.destroy_process_group()  # DeepSpeed's own: it also drops the groups it cached


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float]) -> list[float]:
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        from deepspeed.accelerator import get_accelerator

        dev = get_accelerator().current_device_name()
        t = t.to(dev)
        dist.all_reduce(t)
        t = t.cpu()
    return t.tolist()
