"""The local runner: each job a subprocess on this machine, one per device slot."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from emotune.scheduling.runners.base import JOB_MODULE, JobStatus, Launch
from emotune.scheduling.store import Row


class LocalRunner:
    """Jobs as local subprocesses, one per device slot; `CUDA_VISIBLE_DEVICES` picks each job's GPU(s).

    devices: e.g. ["0", "1"] (a job per GPU), ["0,1"] (one job on two GPUs), or [None] (inherit the
    environment: CPU runs). The jobs are new process sessions, so they outlive a killed scheduler; they
    take over their lease and record their result in the store themselves (runners.job), so there is
    nothing to poll.
    slots: a slot table shared with other runners (a pipeline's runs, one scheduler each), so that the
    devices / `jobs` limit holds for all of them together rather than for each run.
    """

    name = "local"
    detached = False  # `watch --once` waits for its jobs (a CronJob pod must not exit before them)

    def __init__(self, store_path: str, eval_command: str, ttl: float, devices: list[str | None] | None = None,
                 log_dir: str | Path | None = None, slots: dict[int, subprocess.Popen] | None = None):
        self.store_path, self.eval_command, self.ttl = store_path, eval_command, ttl
        self.devices = devices or [None]  # one slot per entry
        self.log_dir = Path(log_dir) if log_dir else None
        self.procs: dict[int, subprocess.Popen] = {} if slots is None else slots  # slot -> running job
        self.mine: set[int] = set()  # pids this runner started (running() counts only these)

    def _free_slots(self) -> list[int]:
        for slot, p in list(self.procs.items()):
            if p.poll() is not None:
                del self.procs[slot]
        return [i for i in range(len(self.devices)) if i not in self.procs]

    def capacity(self, in_flight: int = 0) -> int:
        """Free device slots. `in_flight` is not needed: the slot table holds every job that runs here."""
        return len(self._free_slots())

    def submit(self, row: Row, token: str, task_spec: str | None = None) -> Launch:
        free = self._free_slots()
        if not free:
            raise RuntimeError("no free device slot")
        slot = free[0]
        dev = self.devices[slot]
        env = dict(os.environ, EMOTUNE_JOB_ID=str(row.id))
        if dev is not None:
            env["CUDA_VISIBLE_DEVICES"] = dev
        cmd = [sys.executable, "-m", JOB_MODULE, "job", "--store", self.store_path, "--id", str(row.id),
               "--token", token, "--ttl", str(self.ttl), "--eval-command", self.eval_command,
               "--task", task_spec or row.task]
        log = subprocess.DEVNULL
        if self.log_dir:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = open(self.log_dir / f"job-{row.id}-attempt-{row.attempts}.log", "ab")
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        if log is not subprocess.DEVNULL:
            log.close()
        self.procs[slot] = proc
        self.mine.add(proc.pid)
        return Launch(self.name, f"{socket.gethostname()}:{proc.pid}" + (f" cuda:{dev}" if dev is not None else ""))

    def poll(self, row: Row) -> JobStatus | None:
        return None  # the job renews its lease and records its result in the store itself

    def cancel(self, external_id: str) -> None:
        """Kill a job this runner started (`HOST:PID[ cuda:N]`) with its process session (the evaluator too)."""
        host, _, rest = external_id.partition(":")
        pid = rest.split()[0] if rest else ""
        if host != socket.gethostname() or not pid.isdigit():
            return
        for slot, p in list(self.procs.items()):
            if p.pid == int(pid) and p.pid in self.mine and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)  # its own session (start_new_session): the job and its evaluator
                p.wait()
                del self.procs[slot]

    def running(self) -> int:
        self._free_slots()
        return sum(1 for p in self.procs.values() if p.pid in self.mine)

    def parent_failed(self) -> str | None:
        return None  # local jobs wait for no other job
