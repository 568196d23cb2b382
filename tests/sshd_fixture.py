"""A real sshd bound to 127.0.0.1 on a free port, for testing DeepSpeed's pdsh launcher.

Keys, config and logs live in a temporary directory; nothing in ~/.ssh is touched. Clients use
`ssh -F <dir>/ssh_config` (pdsh through PDSH_SSH_ARGS_APPEND). Needs Debian's openssh-server
and pdsh (installed by .ci/run).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from support import free_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def missing_programs() -> list[str]:
    return [name for name, path in (("sshd", SSHD), ("pdsh", shutil.which("pdsh")), ("ssh-keygen", shutil.which("ssh-keygen")))
            if not path or not os.path.exists(path)]


@dataclass
class LocalSshd:
    port: int
    ssh_config: Path

    def client_env(self) -> dict[str, str]:
        """Environment under which pdsh's ssh reaches this sshd (DeepSpeed appends `-p PORT`)."""
        return {"PDSH_RCMD_TYPE": "ssh", "PDSH_SSH_ARGS_APPEND": f"-F {self.ssh_config}"}


def local_addresses(names: list[str]) -> list[str] | None:
    """The IPv4 addresses `names` resolve to, if every one is an address of this machine (else None)."""
    out = []
    for name in names:
        try:
            addr = socket.gethostbyname(name)
            with socket.socket() as s:
                s.bind((addr, 0))  # only an address of this machine can be bound
        except OSError:
            return None
        out.append(addr)
    return sorted(set(out))


@contextmanager
def local_sshd(workdir: Path, listen: list[str] | None = None):
    listen = listen or ["127.0.0.1"]
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(workdir / name)], check=True)
    (workdir / "authorized_keys").write_text((workdir / "client_key.pub").read_text())
    port = free_port()
    (workdir / "sshd_config").write_text(
        f"Port {port}\n" + "".join(f"ListenAddress {a}\n" for a in listen) + f"HostKey {workdir / 'host_key'}\n"
        f"AuthorizedKeysFile {workdir / 'authorized_keys'}\nPidFile {workdir / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nMaxStartups 50\n"
    )
    (workdir / "ssh_config").write_text(
        f"Host *\n  IdentityFile {workdir / 'client_key'}\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n"
        "  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  BatchMode yes\n"
    )
    os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
    log = open(workdir / "sshd.log", "w")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(workdir / "sshd_config")], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 15
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(workdir / 'sshd.log').read_text()}")
            try:
                socket.create_connection((listen[0], port), timeout=0.5).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("sshd did not listen within 15 s") from None
                time.sleep(0.1)
        yield LocalSshd(port, workdir / "ssh_config")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
