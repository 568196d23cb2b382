"""Plain helpers every test area shares (the pytest fixtures built on them live in conftest.py)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a rendezvous, an sshd, a slurmctld)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
