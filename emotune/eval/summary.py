"""The one summary format that every evaluation suite writes (ICL, MMLU, generation).

`summary.json` in an evaluation's output folder:

    {"model": "<path or hub id>", "suite": "<suite name>", "emotune_version": "...",
     "tasks": {"<task name>": TaskResult-as-dict, ...}}

Written atomically (temp file + os.replace) so a crash never leaves half a file behind. The result
store and the report read this format; keep fields additive.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from emotune import __version__
from emotune.atomic import read_json
from emotune.atomic import write_json as write_json_atomic


@dataclass
class TaskResult:
    task: str
    kind: str  # "icl" | "mmlu" | "generation"
    metrics: dict[str, float]  # e.g. {"accuracy": 0.81} or {"mauve": 0.9, "mauve_std": 0.01}
    n_examples: int
    predictions: str | None = None  # path of the per-example JSONL, relative to the summary
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)  # what ran: encoder, scoring rule, lengths...


def write_summary(out_dir: str | os.PathLike, model: str, suite: str, results: list[TaskResult]) -> Path:
    path = Path(out_dir) / "summary.json"
    write_json_atomic(
        path,
        {
            "model": model,
            "suite": suite,
            "emotune_version": __version__,
            "tasks": {r.task: asdict(r) for r in results},
        },
    )
    return path


def read_summary(path: str | os.PathLike) -> dict[str, Any]:
    return read_json(path, "evaluation summary")
