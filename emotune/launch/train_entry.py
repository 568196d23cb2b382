"""What each rank runs: `python -m emotune.launch.train_entry CONFIG [key=value ...]`.

Launchers start this module once per rank. The `deepspeed` launcher appends `--local_rank=N`
(torchrun sets LOCAL_RANK instead): it is taken off here, exported as LOCAL_RANK, and the rest goes
to `emotune train`, so every launcher runs the very same training command.
"""

from __future__ import annotations

import os
import sys

from emotune.launch.cli import main as cli_main


def split_local_rank(argv: list[str]) -> tuple[list[str], str | None]:
    rest, local_rank, skip = [], None, False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg.startswith(("--local_rank=", "--local-rank=")):
            local_rank = arg.split("=", 1)[1]
        elif arg in ("--local_rank", "--local-rank") and i + 1 < len(argv):
            local_rank, skip = argv[i + 1], True
        else:
            rest.append(arg)
    return rest, local_rank


def main(argv: list[str] | None = None) -> int:
    rest, local_rank = split_local_rank(list(sys.argv[1:] if argv is None else argv))
    if local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", local_rank)
    return cli_main(["train", *rest])


if __name__ == "__main__":
    sys.exit(main())
