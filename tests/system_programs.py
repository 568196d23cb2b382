"""What tests do when a system program (or the OpenICL test install) they drive is missing.

On a user's laptop they skip, saying what to install. In CI (`CI=true`, set by the CI runner) the
programs are installed by `.ci/run` and the Makefile, so a missing one is a broken install step:
the test fails instead of skipping, and a green CI cannot hide it.
"""

from __future__ import annotations

import os

import pytest


def require(missing: list[str], what: str, how: str = "Debian packages; .ci/run installs them") -> None:
    if not missing:
        return
    message = f"{what} needs {', '.join(missing)} ({how})"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=True)
