"""`emotune eval`: the evaluator (emotune.eval.cli) with every finished task recorded in a result store.

The evaluator does not import the scheduler's store (tests/test_import_graph.py), so the command joins the
two: it hands the evaluator emotune.scheduling.record, the one way a result reaches the store. A job the
scheduler started (JOB_ENV in its environment) records nothing here: the scheduler records it.
"""

from __future__ import annotations

import os
from pathlib import Path

from emotune.eval.cli import Recorder


class StoreRecorder(Recorder):
    def check(self, model: str, out: Path, store: str | None) -> None:
        from emotune.scheduling.record import JOB_ENV, check_destination

        if not os.environ.get(JOB_ENV):
            check_destination(model, out, store)

    def record(self, summary: Path, store: str | None, tasks: list[str] | None) -> tuple[Path, Path] | None:
        from emotune.scheduling.record import JOB_ENV, record_summary

        return None if os.environ.get(JOB_ENV) else record_summary(summary, store, tasks)


def main(argv: list[str]) -> int:
    from emotune.eval.cli import main as evaluate

    return evaluate(argv, StoreRecorder())
