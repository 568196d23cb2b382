"""Named crash points, so a test can kill a training run at an exact moment of a save (kill -9).

    EMOTUNE_CRASH_AT=after_resumable:4          every rank SIGKILLs itself there at step 4
    EMOTUNE_CRASH_AT=deepspeed_save:4:1         only rank 1 (here: after its first shard file)

Unset (always, outside the crash test) this costs one environment lookup per save. The points, in
the order a save passes them (emotune/train/checkpoint.py):

    deepspeed_save         inside DeepSpeed's save_checkpoint, after this rank wrote its first file
    before_resumable       every rank's shards on disk and hashed, before the ledger and RESUMABLE
    after_resumable        RESUMABLE written, old states not yet pruned, export not started
    export_tmp             the export written into .checkpoint-STEP.tmp, no manifest yet
    export_before_complete checkpoint-STEP/ in place, COMPLETE not yet written
"""

from __future__ import annotations

import os
import signal

ENV = "EMOTUNE_CRASH_AT"


def armed(name: str, step: int, rank: int) -> bool:
    spec = os.environ.get(ENV)
    if not spec:
        return False
    parts = spec.split(":")
    if parts[0] != name or len(parts) < 2 or parts[1] != str(step):
        return False
    return len(parts) < 3 or parts[2] == str(rank)


def crashpoint(name: str, step: int, rank: int) -> None:
    if armed(name, step, rank):
        os.kill(os.getpid(), signal.SIGKILL)


def arm_deepspeed_save(engine, step: int, rank: int) -> None:
    """Make DeepSpeed's own save kill this rank right after the first file it writes (if armed)."""
    if not armed("deepspeed_save", step, rank):
        return
    ce = engine.checkpoint_engine
    inner = ce.save

    def save(*args, **kwargs):
        inner(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)

    ce.save = save
