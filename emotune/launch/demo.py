"""`emotune demo`: the embedded default job, `emotune pipeline configs/pipeline/demo.yaml`.

Offline on a CPU: a synthetic language with a known distribution, a tiny LLaMA pre-trained with MLE,
continual fine-tuning with MLE and EMO (DeepSpeed ZeRO-3, 2 ranks, 3 seeds), evaluation of every
checkpoint (in-context classification + the paper's oracle metrics) and the report. Run it from the
repository root; extra arguments are pipeline overrides.
"""

from __future__ import annotations

from pathlib import Path

from emotune.errors import ArgumentParser, EmotuneError
from emotune.objectives import describe

DEMO_CONFIG = Path("configs/pipeline/demo.yaml")


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if not DEMO_CONFIG.is_file():
        raise EmotuneError(f"{DEMO_CONFIG} not found: run `emotune demo` (or `make demo`) from the repository root")
    from emotune.launch.pipeline import main as pipeline_main

    return pipeline_main([str(DEMO_CONFIG), *argv])


def list_losses(argv: list[str]) -> int:
    ArgumentParser(prog="emotune losses", description="list the training objectives").parse_args(argv)
    print(describe())
    return 0
