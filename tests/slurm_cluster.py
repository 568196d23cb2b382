"""A real one-node SLURM cluster for tests (Debian `slurm-wlm` + `munge`), started and stopped by a fixture.

    from slurm_cluster import slurm_cluster          # in a test module (tests/ is on sys.path)

    def test_x(slurm_cluster):
        job = slurm_cluster.sbatch(script_path, "--dependency=afterok:12")
        slurm_cluster.wait(job)                       # until it left the queue
        assert slurm_cluster.state(job) == ("COMPLETED", "0:0")
        subprocess.run(["squeue"], env=slurm_cluster.env)   # SLURM_CONF is set in .env

Everything lives in one short temporary directory (unix socket paths must fit in 108 bytes): munged on
its own socket, slurmctld + slurmd on free loopback ports (two test sessions on one machine do not
collide), `kill_invalid_depend` so that a failed parent cancels its `afterok` dependants. Only the
daemons this fixture started are stopped, by their recorded PIDs. Without the binaries the tests
skip, saying which package is missing (in CI they fail: tests/system_programs.py). The recipe is this module.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import free_port
from system_programs import require

BINARIES = {"munged": "munge", "mungekey": "munge", "munge": "munge", "slurmctld": "slurm-wlm",
            "slurmd": "slurm-wlm", "sbatch": "slurm-wlm", "squeue": "slurm-wlm", "scontrol": "slurm-wlm",
            "sinfo": "slurm-wlm", "scancel": "slurm-wlm"}


def _which(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)), None)


def missing_binaries() -> list[str]:
    return sorted({f"{b} (Debian package {pkg})" for b, pkg in BINARIES.items() if _which(b) is None})


CONF = """ClusterName=ci{suffix}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
AuthInfo=socket={d}/munge/sock
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pidfile
SlurmdPidFile={d}/slurmd.pidfile
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={d}/log/jobcomp.txt
ReturnToService=2
MinJobAge=3600
SchedulerParameters=batch_sched_delay=0
DependencyParameters=kill_invalid_depend
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    dir: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, check=check, timeout=timeout)

    def sbatch(self, script: str | os.PathLike, *args: str) -> str:
        """Submit a batch script; returns the job id. Output goes to the cluster folder unless args say where."""
        if not any(a.startswith(("--output", "-o")) for a in args):
            args = (f"--output={self.dir}/job-%j.out", *args)
        return self.run("sbatch", "--parsable", *args, str(script)).stdout.strip().split(";")[0]

    def queued(self, job_id: str) -> bool:
        return bool(self.run("squeue", "-h", "-j", job_id, check=False).stdout.strip())

    def wait(self, job_id: str, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while self.queued(job_id):
            if time.time() > deadline:
                raise TimeoutError(f"SLURM job {job_id} still queued after {timeout}s")
            time.sleep(0.2)

    def job(self, job_id: str) -> dict[str, str]:
        out = self.run("scontrol", "show", "job", "-o", job_id, check=False).stdout
        return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)

    def state(self, job_id: str) -> tuple[str | None, str | None]:
        info = self.job(job_id)
        return info.get("JobState"), info.get("ExitCode")

    def log(self, name: str = "slurmctld") -> str:
        p = self.dir / "log" / f"{name}.log"
        return p.read_text(errors="replace") if p.exists() else ""


def _wait_for(check, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not check():
        if time.time() > deadline:
            raise RuntimeError(f"SLURM test cluster: {what} not ready after {timeout}s")
        time.sleep(0.1)


def start_cluster() -> SlurmCluster:
    require(missing_binaries(), "the SLURM test cluster", "apt-get install -y slurm-wlm munge; .ci/run installs them")
    d = Path(tempfile.mkdtemp(prefix="sl", dir="/tmp"))
    os.chmod(d, 0o755)  # munged insists that every folder above its socket is executable for all
    for sub in ("munge", "state", "spool", "log"):
        (d / sub).mkdir()
    env = dict(os.environ, SLURM_CONF=str(d / "slurm.conf"))
    cluster = SlurmCluster(d, env)
    try:
        subprocess.run([_which("mungekey"), "-c", "-k", str(d / "munge" / "munge.key")], check=True,
                       capture_output=True)
        os.chmod(d / "munge", 0o755)
        sock = str(d / "munge" / "sock")
        cluster.procs["munged"] = subprocess.Popen(
            [_which("munged"), "-F", f"--socket={sock}", f"--key-file={d / 'munge' / 'munge.key'}",
             f"--pid-file={d / 'munge' / 'munged.pid'}", f"--seed-file={d / 'munge' / 'seed'}",
             f"--log-file={d / 'munge' / 'munged.log'}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

        def munge_ok():
            cred = subprocess.run([_which("munge"), "-n", "-S", sock], capture_output=True)
            return cred.returncode == 0 and subprocess.run(["unmunge", "-S", sock], input=cred.stdout,
                                                           capture_output=True).returncode == 0
        _wait_for(munge_ok, 20, "munged")

        host = socket.gethostname().split(".")[0]
        mem = 1024
        try:
            for line in open("/proc/meminfo"):
                if line.startswith("MemAvailable:"):
                    mem = max(int(int(line.split()[1]) / 1024 * 0.9), 256)
        except OSError:
            pass
        (d / "slurm.conf").write_text(CONF.format(d=d, host=host, cpus=os.cpu_count() or 1, mem=mem,
                                                  ctld_port=free_port(), d_port=free_port(), suffix=d.name[-4:]))
        conf = str(d / "slurm.conf")
        cluster.procs["slurmctld"] = subprocess.Popen([_which("slurmctld"), "-D", "-i", "-f", conf], env=env,
                                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                                      start_new_session=True)
        cluster.procs["slurmd"] = subprocess.Popen([_which("slurmd"), "-D", "-N", host, "-f", conf], env=env,
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                                   start_new_session=True)

        def idle():
            for name, p in cluster.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"SLURM test cluster: {name} exited with status {p.returncode}; logs in "
                                       f"{d / 'log'}:\n{cluster.log(name if name != 'munged' else 'slurmctld')[-2000:]}")
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True, timeout=30)
            return out.stdout.strip() == "idle"
        _wait_for(idle, 60, "node (sinfo idle)")
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def stop_cluster(cluster: SlurmCluster) -> None:
    if "slurmctld" in cluster.procs and cluster.procs["slurmctld"].poll() is None:
        ids = cluster.run("squeue", "-h", "-o", "%i", check=False, timeout=30).stdout.split()
        if ids:
            cluster.run("scancel", *ids, check=False, timeout=30)
    for name in ("slurmd", "slurmctld", "munged"):  # only the daemons this fixture started
        p = cluster.procs.get(name)
        if p is None or p.poll() is not None:
            continue
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    shutil.rmtree(cluster.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running one-node cluster for the whole test session; `.env` carries SLURM_CONF for every client."""
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        stop_cluster(cluster)
