"""Plain helpers every test area shares (the pytest fixtures built on them live in conftest.py)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a rendezvous, an sshd, a slurmctld)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(argv: list[str]) -> int:
    """`emotune ARGV` in this process, as `python -m emotune ARGV` would run it (output to the test's capsys/capfd):
    its exit status. The environment (a launcher's --local_rank goes to LOCAL_RANK) and the root logger's
    handlers (a command's log handler holds this test's captured stderr) are put back afterwards."""
    import logging
    import os

    from emotune.cli import main

    env, handlers, level = dict(os.environ), logging.root.handlers[:], logging.root.level
    try:
        return main(argv)
    except SystemExit as exit_:  # argparse --help and friends
        return exit_.code
    finally:
        os.environ.clear()
        os.environ.update(env)
        logging.root.handlers[:] = handlers
        logging.root.setLevel(level)
