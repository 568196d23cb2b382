"""What may go into a generated SLURM script (the training script of `emotune launch --sbatch` and the
eval jobs of `emotune watch --runner slurm`).

An `#SBATCH` line is parsed by sbatch, not by a shell, and ends at the newline: a value holding a newline
would start a new line of the script, which bash then runs. So everything interpolated into an
`#SBATCH` line is checked here (no control characters; `--sbatch-arg` values must be options), job names
are reduced to safe characters, and whatever goes into the shell part is `shlex`-quoted by the writers.
Names that become directory names (task, suite) must be one path component.
"""

from __future__ import annotations

import re

from emotune.errors import EmotuneError

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def check_line_value(value: str, what: str) -> str:
    """A value for one line of a script: no newline, carriage return, NUL or other control character."""
    if not isinstance(value, str) or _CONTROL.search(value):
        raise EmotuneError(f"{what} {value!r}: contains a newline or control character, which would break "
                           "(or inject a line into) the generated SLURM script")
    return value


def check_sbatch_args(values: list[str], what: str = "--sbatch-arg") -> list[str]:
    """Each value becomes `#SBATCH VALUE`: it must be one sbatch option (`--gres=gpu:1`, `-p gpu`)."""
    for value in values:
        check_line_value(value, what)
        if not value.strip().startswith("-"):
            raise EmotuneError(f"{what} {value!r}: not an sbatch option (expected e.g. --gres=gpu:1 or --partition=gpu)")
    return list(values)


def job_name(text: str, limit: int = 128) -> str:
    """A SLURM job name made of safe characters only (anything else becomes `_`)."""
    return _UNSAFE_NAME.sub("_", str(text))[:limit] or "emotune"


def path_component(name: str, what: str) -> str:
    """A name used as one directory name: no separators, no `..`, no control characters."""
    name = str(name)
    if not name or name in (".", "..") or "/" in name or "\\" in name or _CONTROL.search(name):
        raise EmotuneError(f"{what} {name!r}: cannot be a directory name (no '/', '..', newlines or control characters)")
    return name
