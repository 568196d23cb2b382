"""What each rank runs: `python -m emotune.launch.train_entry CONFIG [key=value ...]`.

Launchers start this module once per rank; it is `emotune train` (which takes the `--local_rank=N`
the deepspeed launcher appends; torchrun sets LOCAL_RANK instead), with the CLI's one-line error
reporting, so every launcher runs the very same training command.
"""

from __future__ import annotations

import sys

from emotune.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
