"""Sharded evaluation: a big task's test rows split into N jobs, merged back into one exact result.

The contract shared by the evaluator (`emotune eval ... shard=K/N`) and the scheduler (which runs one job
per shard and merges), torch-free so that both can use it without depending on each other:

- `shard_range`: shard K of N is the K-th of N contiguous ranges of the task's test rows, counted after
  `limit` and the split's slice (MMLU: in the order the rows are evaluated, subject by subject). Every
  row is in exactly one shard; ranges differ in length by at most one row.
- A shard writes the per-row records of its rows only (`<task>.predictions.jsonl`, `id` = the row's
  index in the whole task) and a partial summary. It computes them exactly as the unsharded run does —
  demos retrieved for the whole test set, the same model calls (emotune.eval.icl.scorer's `select`) —
  so its records are byte for byte the unsharded run's.
- `merge_shards` concatenates the shards' records in shard order (byte-identical to the unsharded
  predictions file) and computes the task's metrics from them with the same functions the evaluator
  uses (`task_metrics`), so the merged numbers are exactly the unsharded ones.

Only kinds whose metrics decompose over rows can be sharded (their registry entry's `row_metrics`:
ICL classification, MMLU); MAUVE and the oracle metrics are computed over the whole sample set, so
generation and oracle tasks refuse `shards > 1`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from emotune.errors import EmotuneError
from emotune.tasks.registry import KINDS, shardable_kinds

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def check_shards(value: Any, where: str) -> int:
    """A `shards:` value: a positive integer (not a bool, not a float)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EmotuneError(f"{where}: key 'shards' must be a positive integer (got {value!r})")
    return value


def check_shardable(kind: str, shards: int, where: str) -> None:
    if shards > 1 and kind not in shardable_kinds():
        raise EmotuneError(f"{where}: key 'shards': a kind: {kind} task cannot be sharded (its metrics, e.g. "
                           f"MAUVE, are computed over all samples at once); only {', '.join(shardable_kinds())} tasks can")


def parse_shard(value: Any, where: str = "shard") -> tuple[int, int]:
    """`K/N` (1 <= K <= N) -> (K, N)."""
    m = _SHARD.match(str(value))
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise EmotuneError(f"{where}={value!r}: expected K/N with 1 <= K <= N, e.g. shard=2/8")
    return int(m.group(1)), int(m.group(2))


def shard_name(k: int, n: int) -> str:
    return f"{k}/{n}"


def shard_settings(rows: range, k: int, n: int, n_rows: int) -> dict[str, Any]:
    """What a shard's summary records about it; the merge checks the shards tile the rows with it."""
    return {"shard": shard_name(k, n), "shard_rows": [rows.start, rows.stop, n_rows]}


def shard_range(n_rows: int, k: int, n: int, where: str = "shard") -> range:
    """Rows [floor((K-1)·R/N), floor(K·R/N)) of R: N contiguous ranges covering every row once."""
    if n > n_rows:
        raise EmotuneError(f"{where}={k}/{n}: {n} shards but the task has only {n_rows} test rows "
                           "(use at most that many shards)")
    return range((k - 1) * n_rows // n, k * n_rows // n)


# ------------------------------------------------------------------------------------ merging

def _shard_result(out: Path, task: str) -> dict:
    from emotune.atomic import read_json

    summary = read_json(out / "summary.json", "shard summary")
    tasks = summary.get("tasks") if isinstance(summary, dict) else None
    if not isinstance(tasks, dict) or len(tasks) != 1:
        raise EmotuneError(f"{out / 'summary.json'}: expected the result of one task (shard {task!r})")
    result = next(iter(tasks.values()))
    if not isinstance(result, dict) or not result.get("predictions"):
        raise EmotuneError(f"{out / 'summary.json'}: the shard's result names no predictions file")
    return {**result, "model": summary.get("model"), "suite": summary.get("suite"),
            "emotune_version": summary.get("emotune_version")}


def task_metrics(kind: str, records: list[dict]) -> dict[str, float]:
    """A shardable task's metrics from its per-row records (the evaluator's own functions, by its kind)."""
    entry = KINDS.get(kind)
    if entry is None or entry.row_metrics is None:
        raise EmotuneError(f"kind {kind!r} tasks cannot be merged from shards (only {', '.join(shardable_kinds())})")
    return entry.row_metrics(records)


def merge_shards(task: str, shard_dirs: list[Path], out_dir: Path) -> dict[str, Any]:
    """Merge the outputs of a task's shards (in shard order) into `out_dir`: the predictions file (the
    shards' lines concatenated) and summary.json. Returns the task's result (metrics, n_examples,
    predictions path, seconds). Refuses shards whose rows are not exactly 0..R-1 in order."""
    from emotune.atomic import atomic_open, write_json
    from emotune.tasks.metrics import row_counts

    results = [_shard_result(Path(d), task) for d in shard_dirs]
    kinds = {r.get("kind") for r in results}
    if len(kinds) != 1:
        raise EmotuneError(f"task {task!r}: its shards report different kinds {sorted(map(str, kinds))}")
    kind = kinds.pop()
    keys = [{k: v for k, v in ((r.get("settings") or {}).get("resume_key") or {}).items() if k != "shard"}
            for r in results]
    if any(key != keys[0] for key in keys):  # other weights, options or task definition: not one run's parts
        k = next(i for i, key in enumerate(keys) if key != keys[0])
        raise EmotuneError(f"{Path(shard_dirs[k]) / 'summary.json'}: shard {k + 1} was evaluated with other settings "
                           f"than shard 1 (resume_key {keys[k]} vs {keys[0]})")
    lines: list[bytes] = []
    records: list[dict] = []
    n_shards, total = len(results), None
    for k, (d, r) in enumerate(zip(shard_dirs, results), 1):
        path, settings = Path(d) / r["predictions"], r.get("settings") or {}
        rows = settings.get("shard_rows")
        # the shards must tile the task's rows: shard k of N holds rows [a, b), a = the previous shard's b
        if settings.get("shard") != shard_name(k, n_shards) or not isinstance(rows, list) or len(rows) != 3 \
                or rows[0] != len(records) or (total is not None and rows[2] != total):
            raise EmotuneError(f"{Path(d) / 'summary.json'}: not shard {k}/{n_shards} of task {task!r} following "
                               f"row {len(records)} (settings shard={settings.get('shard')!r}, shard_rows={rows!r})")
        total = rows[2]
        for n, line in enumerate(path.read_bytes().splitlines(keepends=True), 1):
            try:
                rec = json.loads(line)
            except ValueError:
                raise EmotuneError(f"{path}:{n}: not a JSON record") from None
            if not isinstance(rec, dict):
                raise EmotuneError(f"{path}:{n}: not a JSON record")
            records.append(rec)
            lines.append(line)
        if len(records) != rows[1] or r.get("n_examples") != rows[1] - rows[0]:
            raise EmotuneError(f"{path}: holds {len(records) - rows[0]} rows, its summary says rows "
                               f"{rows[0]}..{rows[1]} (n_examples {r.get('n_examples')!r})")
    if not records or len(records) != total:
        raise EmotuneError(f"task {task!r}: its shards hold {len(records)} of {total} rows")
    out_dir.mkdir(parents=True, exist_ok=True)
    pred_name = f"{task}.predictions.jsonl"
    with atomic_open(out_dir / pred_name, "wb") as f:
        for line in lines:
            f.write(line)
    settings = {k: v for k, v in (results[0].get("settings") or {}).items() if k not in ("shard", "shard_rows")}
    settings["merged_from_shards"] = len(results)
    if kind in KINDS and KINDS[kind].fits_prompts:  # the rows max_seq_len touched, over all shards
        settings.update(row_counts(records))
    merged = {"task": task, "kind": kind, "metrics": task_metrics(kind, records), "n_examples": len(records),
              "predictions": pred_name, "seconds": round(sum(float(r.get("seconds") or 0) for r in results), 3),
              "settings": settings}
    write_json(out_dir / "summary.json", {"model": results[0]["model"], "suite": results[0]["suite"],
                                          "emotune_version": results[0]["emotune_version"], "tasks": {task: merged}})
    return {**merged, "predictions": str((out_dir / pred_name).resolve())}


def shard_dir(task_dir: str | os.PathLike, k: int, n: int) -> Path:
    """Where shard K of N of a task writes, inside the task's output folder."""
    return Path(task_dir) / f"shard-{k}-of-{n}"
