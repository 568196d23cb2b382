"""`emotune demo`: the embedded default job, `emotune pipeline configs/pipelines/demo.yaml`.

Offline on a CPU: a synthetic language with a known distribution, a tiny LLaMA pre-trained with MLE,
continual fine-tuning with MLE and EMO (DeepSpeed ZeRO-3, 2 ranks, 3 seeds), evaluation of every
checkpoint (in-context classification + the paper's oracle metrics) and the report. Run it from the
directory you like (its runs/ folder receives the output); extra arguments are pipeline overrides.
"""

from __future__ import annotations

import sys
from pathlib import Path

from emotune.errors import ArgumentParser
from emotune.objectives import describe

DEMO_CONFIG = "configs/pipelines/demo.yaml"  # shipped (emotune/configs); a ./configs/pipelines/demo.yaml of yours wins
OLD_DEMO_CONFIG = "configs/pipeline/demo.yaml"  # TODO(next release): remove; where a user's own override lived before


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        from emotune.launch.pipeline import help_epilog

        print(f"usage: emotune demo [key=value ...]\n\n{__doc__}\nkey=value: overrides of {DEMO_CONFIG} "
              f"(e.g. run_dir=runs/demo2 'runs.1.matrix.seed=[0]'),\nas for `emotune pipeline`:\n\n{help_epilog()}")
        return 0
    from emotune.launch.pipeline import main as pipeline_main

    return pipeline_main([demo_config(), *argv])


def demo_config() -> str:
    """The demo's pipeline config: the user's own override at the old place still wins for one release."""
    if Path(OLD_DEMO_CONFIG).is_file() and not Path(DEMO_CONFIG).exists():
        print(f"emotune: {OLD_DEMO_CONFIG} has moved to {DEMO_CONFIG}; the old path works until the next release",
              file=sys.stderr, flush=True)
        return OLD_DEMO_CONFIG
    return DEMO_CONFIG


def list_losses(argv: list[str]) -> int:
    ArgumentParser(prog="emotune losses", description="list the training objectives").parse_args(argv)
    print(describe())
    return 0
