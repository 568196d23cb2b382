"""The one exception type for bad user input (config, data file, checkpoint, CLI argument), and the
helpers that keep its message to one line.

The CLI prints the message on one line and exits 2, without a traceback. Raise it with a message that
names the file, key or line at fault; wrap a library's (often multi-line) message with `one_line`.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Callable


class EmotuneError(Exception):
    """A problem with what the user gave us, not a bug in emotune."""


_NOISE = re.compile(r"^(for further information visit|see https?://|check your internet connection)", re.I)


def one_line(err: BaseException | str, limit: int = 300) -> str:
    """The meaningful line of a library message: the first line, unless it only announces what follows
    ("Class validation error for ...:", "1 validation error for X"), then the next one; at most `limit` chars."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip() and not _NOISE.match(ln.strip())]
    if not lines:
        return type(err).__name__ if isinstance(err, BaseException) else ""
    pick = lines[0]
    if len(lines) > 1 and (pick.endswith(":") or re.match(r"^\d+ validation errors? for ", pick)):
        pick = " ".join(lines[1:3]) if re.match(r"^\d+ validation errors? for ", pick) else lines[1]
    pick = re.sub(r"\s+", " ", pick)
    return pick if len(pick) <= limit else pick[: limit - 3] + "..."


def yaml_error(path, err) -> EmotuneError:
    """A YAML syntax error as one line: `FILE: line N: not valid YAML: PROBLEM`."""
    mark = getattr(err, "problem_mark", None)
    where = f" line {mark.line + 1}:" if mark is not None else ""
    problem = getattr(err, "problem", None) or one_line(err)
    return EmotuneError(f"{path}:{where} not valid YAML: {problem}")


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are EmotuneErrors: one line (`emotune CMD: error: ...`), exit 2, no usage dump.

    One grammar for every command: positionals, options and `key=value` overrides in any order
    (`emotune launch CFG --procs-per-node 8 output_dir=/runs/x`). Plain argparse stops collecting a
    `nargs="*"` positional at the first option, so `parse_args` parses intermixed; only a parser with
    sub-commands (which argparse cannot intermix) keeps the plain order."""

    def parse_args(self, args=None, namespace=None):  # noqa: D102 - argparse's API
        if any(isinstance(a, argparse._SubParsersAction) for a in self._actions):
            return super().parse_args(args, namespace)
        return self.parse_intermixed_args(args, namespace)

    def error(self, message: str):  # noqa: D401 - argparse's hook
        raise EmotuneError(f"{message} (see {self.prog} --help)")


def run_cli(name: str, func: Callable[[list[str]], int | None], argv: list[str]) -> int:
    """Run one command's `main(argv)` the way every emotune command reports: an EmotuneError is one line
    (`emotune NAME: error: ...`) on stderr and exit status 2, Ctrl-C is status 130, neither with a traceback.
    Used by the `emotune` dispatcher and by modules run directly (`python -m emotune.train.recipe`), so a
    stage run as a module reports the same way without importing the launcher."""
    try:
        return int(func(argv) or 0)
    except EmotuneError as err:
        # One line whatever the message: a stray newline would split it (or inject a fake line).
        message = " ".join(part.strip() for part in str(err).splitlines() if part.strip())
        print(f"emotune {name}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"emotune {name}: interrupted", file=sys.stderr)
        return 130
