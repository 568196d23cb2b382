"""Fixtures shared by the end-to-end tests: what is expensive to set up is set up once per session."""

from __future__ import annotations

import pytest
from installed_venv import install_wheel


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
