"""What a rank sees: `emotune launch ... --probe` starts this in place of training, in every rank.

    python -m emotune.launch.probe OUT_DIR [NAME ...]

Each rank writes OUT_DIR/rank-<RANK>.json and prints one line: its rank, local rank, world size, the
rendezvous (MASTER_ADDR, MASTER_PORT), the process-group timeout DeepSpeed will use (DEEPSPEED_TIMEOUT,
minutes), the host, and the value of every NAME (the `--env` names of the launch). A name that looks
like a secret is recorded as its length and a SHA-256 prefix only. It imports neither torch nor
DeepSpeed, so checking a cluster launch (every node, the ranks, the variables) takes seconds.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
from pathlib import Path

from emotune.atomic import write_json
from emotune.errors import EmotuneError, run_cli
from emotune.launch.launcher import SECRET
from emotune.plumbing import take_local_rank

SEEN = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "DEEPSPEED_TIMEOUT")


def shown(name: str, value: str | None) -> str | None:
    if value is None or not SECRET.search(name):
        return value
    return f"<secret: {len(value)} chars, sha256 {hashlib.sha256(value.encode()).hexdigest()[:12]}>"


def main(argv: list[str]) -> int:
    argv = take_local_rank(argv)  # the DeepSpeed launcher's --local_rank=N goes to LOCAL_RANK
    if not argv:
        raise EmotuneError("usage: python -m emotune.launch.probe OUT_DIR [NAME ...]")
    out, names = Path(argv[0]), argv[1:]
    seen = {key: os.environ.get(key) for key in SEEN}
    if seen["RANK"] is None or not seen["RANK"].isdigit():
        raise EmotuneError(f"RANK={seen['RANK']!r}: not started by a launcher")
    record = {"host": socket.gethostname(), "pid": os.getpid(), **{k.lower(): v for k, v in seen.items()},
              "env": {name: shown(name, os.environ.get(name)) for name in names}}
    write_json(out / f"rank-{seen['RANK']}.json", record)
    print("emotune probe: " + " ".join(f"{k}={v}" for k, v in record.items() if k != "env")
          + "".join(f" {k}={v}" for k, v in record["env"].items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli("probe", main, sys.argv[1:]))
