"""Fixtures shared by the end-to-end tests: what is expensive to set up is set up once per session."""

from __future__ import annotations

import pytest
from installed_venv import install_wheel

# The variables a launcher sets for its ranks. A user's shell has none of them; an in-process one-rank group of an
# earlier test in the same worker process may have left them (its MASTER_PORT may even still be bound), and every
# command an end-to-end test starts would inherit them.
RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@pytest.fixture(autouse=True)
def users_shell(monkeypatch):
    """Each end-to-end test runs its commands from a user's shell: no launcher's rendezvous variables."""
    for key in RENDEZVOUS:
        monkeypatch.delenv(key, raising=False)


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory):
    """emotune's wheel, built once per session and installed into a fresh venv (tests/installed_venv.py)."""
    return install_wheel(tmp_path_factory.mktemp("installed"))


@pytest.fixture
def installed(installed_wheel, tmp_path):
    """The session's installed wheel, every command run from an empty directory of this test's own; `.root`
    is the test's own folder for what the test writes."""
    work = tmp_path / "empty"
    work.mkdir()

    def run(*args: str, timeout: int = 600):
        return installed_wheel(*args, timeout=timeout, cwd=work)

    run.venv, run.purelib, run.work, run.root = installed_wheel.venv, installed_wheel.purelib, work, tmp_path
    return run
