"""The one way a result reaches the result store, whichever command made it.

An evaluator writes `summary.json` (emotune.eval.summary); `task_result` reads one task's result out of
it, for the scheduler's job (emotune.scheduling.runners) and for `emotune eval` run by hand
(`record_summary`), so the two record the same fields the same way:

- a scheduled job: the scheduler leased the row, the job reads the summary and `Store.finish`es it;
- `emotune eval --out DIR` by hand: every task it finished becomes a finished row (`Store.record`) in the
  store of the run whose checkpoint it evaluated (`RUN/eval/results.sqlite`, keyed by the checkpoint's
  step and fingerprint like the scheduler's rows), or, for a model that is no run's checkpoint (a hub
  id, a folder of your own), in `DIR/eval/results.sqlite` (`emotune results DIR`); `--store PATH` picks
  the store. Its suite version is `eval-<hash of the task's settings>`: never the key of a scheduled row.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from emotune.atomic import read_json
from emotune.errors import EmotuneError
from emotune.manifest import BadCheckpoint
from emotune.scheduling.discovery import read_checkpoint, read_run_config
from emotune.scheduling.store import Store, default_store_path

# Set by the scheduler in its jobs' environment: the scheduler records those results itself.
JOB_ENV = "EMOTUNE_JOB_ROW"


def task_result(summary: dict[str, Any], task: str, out: Path) -> dict[str, Any]:
    """One task's result as the store holds it (metrics, n_examples, predictions, eval_seconds).

    Keyed by task name; an evaluator given a task file may key by what it was given, so a summary of one
    task is that task's. KeyError / TypeError / ValueError for a summary that is not one."""
    tasks = summary["tasks"]
    result = tasks[task] if task in tasks else next(iter(tasks.values())) if len(tasks) == 1 else tasks[task]
    metrics = {k: float(v) for k, v in result["metrics"].items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    preds = result.get("predictions")
    return {"metrics": metrics, "n_examples": result.get("n_examples"),
            "predictions": str((out / preds).resolve()) if preds else None, "eval_seconds": result.get("seconds")}


def _checkpoint(model: str):
    """The run checkpoint behind `--model` (RUN/checkpoint-N, or its LoRA merged/ folder), else None."""
    path = Path(model)
    for folder in (path, path.parent) if path.name == "merged" else (path,):
        if (folder / "manifest.json").is_file():
            try:
                return read_checkpoint(folder, verify_hashes=False)  # the evaluator already loaded it
            except BadCheckpoint:
                return None
    return None


def destination(model: str, out: Path, store: str | None) -> tuple[Path, Path]:
    """(store path, run folder) where the results of evaluating `model` into `out` are recorded."""
    ckpt = _checkpoint(model)
    run = ckpt.path.parent.resolve() if ckpt is not None else Path(out).resolve()
    return (Path(store) if store else default_store_path(run)), run


def check_destination(model: str, out: Path, store: str | None) -> None:
    """Before an evaluation: its store, where one exists, is a usable result store (one line otherwise);
    nothing is created (a bad input later must leave no empty store behind)."""
    path, _ = destination(model, out, store)
    if path.exists() or store:
        if path.exists() and not path.is_file():
            raise EmotuneError(f"--store {path}: is a directory, not a result store")
        if path.is_file():
            Store(path, create=False).close()
        elif path.parent.exists() and not path.parent.is_dir():
            raise EmotuneError(f"--store {path}: {path.parent} is a file, not a folder")


def recorded_run(summary_path: Path) -> Path | None:
    """The run whose store `record_summary` puts this summary's results in (None: not a readable summary)."""
    try:
        model = read_json(summary_path, "evaluation summary")["model"]
    except (EmotuneError, KeyError, TypeError):
        return None
    return destination(str(model), summary_path.parent, None)[1]


def _suite_version(result: dict[str, Any]) -> str:
    settings = result.get("settings") or {}
    key = settings.get("resume_key", settings)
    return "eval-" + hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _objective(run: Path, ckpt) -> str | None:
    if ckpt is not None and ckpt.objective:
        return ckpt.objective
    try:
        cfg = read_run_config(run) or {}
    except EmotuneError:
        return None
    obj = cfg.get("objective")
    return obj.get("name") if isinstance(obj, dict) and isinstance(obj.get("name"), str) else None


def record_summary(summary_path: Path, store: str | None = None, tasks: list[str] | None = None) -> tuple[Path, Path]:
    """Record the tasks (default: every task) of an evaluator's summary.json as finished rows.
    Returns (store path, run folder the rows belong to: what `emotune results` / `report` take)."""
    out = summary_path.parent.resolve()
    try:
        summary = read_json(summary_path, "evaluation summary")
        names = list(summary["tasks"]) if tasks is None else tasks
        model = str(summary["model"])
        rows = {name: (summary["tasks"][name], task_result(summary, name, out)) for name in names}
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise EmotuneError(f"{summary_path}: not an evaluation summary ({err!r})") from None
    ckpt = _checkpoint(model)
    path, run = destination(model, out, store)
    with Store(path) as db:
        for name, (raw, fields) in rows.items():
            fp = ckpt.fingerprint if ckpt is not None else \
                str(((raw.get("settings") or {}).get("resume_key") or {}).get("model") or model)
            db.record(run=str(run), step=ckpt.step if ckpt is not None else 0, fingerprint=fp,
                      suite=str(summary.get("suite") or "custom"), suite_version=_suite_version(raw), task=name,
                      checkpoint=str(ckpt.path.resolve() if ckpt is not None else model),
                      tokens_seen=ckpt.tokens_seen if ckpt is not None else None,
                      objective=_objective(run, ckpt), output_dir=str(out), **fields)
    return path, run
