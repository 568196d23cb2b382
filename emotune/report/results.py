"""`emotune results RUN_DIR [--json] [--best]`: what the result store holds for a run.

The table has one line per checkpoint step and a column per task (the task's main metric, with its
standard error `± se` where the evaluator gave one: `<metric>_stderr`, emotune.stats), plus the
average and the job states; `--json` prints every row (metrics, timings, host, status, error). The
run's best checkpoint (best.json: lowest validation loss by default) is marked `*`; `--best` shows
only its rows. RUN_DIR is a training run's folder, or an `emotune eval --out` folder (emotune.scheduling.record
puts every result there, whichever command made it); where there is nothing to show, one line says what to
run (exit status 2).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from emotune.errors import ArgumentParser, EmotuneError
from emotune.scheduling.discovery import read_best
from emotune.scheduling.store import Row, Store, default_store_path
from emotune.tasks.suites import shipped_suites

MAIN_METRICS = ("accuracy", "acc", "mauve", "accuracy_macro", "exact_match")


def main_metric_name(metrics: dict[str, float] | None) -> str | None:
    if not metrics:
        return None
    for k in MAIN_METRICS:
        if k in metrics:
            return k
    return min((k for k in metrics if not k.endswith("_stderr")), default=min(metrics))


def main_metric(metrics: dict[str, float] | None) -> float | None:
    name = main_metric_name(metrics)
    return None if name is None else metrics[name]


def main_stderr(metrics: dict[str, float] | None) -> float | None:
    """The standard error of the main metric (`<metric>_stderr`, emotune.stats), where the evaluator gave one."""
    name = main_metric_name(metrics)
    return None if name is None else metrics.get(f"{name}_stderr")


WHAT_TO_RUN = ("`emotune watch {run} --suite NAME` (every checkpoint of a training run) or `emotune eval --model "
               "CKPT --suite NAME --out DIR` (one model)")


def nothing_to_show(run_dir: str | Path, path: Path, suite: str | None = None, exists: bool = True) -> EmotuneError:
    """One line for a folder with no results: where they were looked for, and what to run."""
    run = Path(run_dir)
    if suite and exists:  # results, but of other suites
        with Store(path, create=False) as store:
            have = sorted({r.suite for r in store.rows(str(run.resolve()))})
        if have:
            return EmotuneError(f"no results of suite {suite} for {run} in {path} (its suites: {', '.join(have)})")
    if (run / "summary.json").is_file():  # an `emotune eval --out` folder whose results went elsewhere
        from emotune.scheduling.record import recorded_run

        other = recorded_run(run / "summary.json")
        if other is not None and other != run.resolve():
            return EmotuneError(f"{run}: its evaluation evaluated a checkpoint of {other}, so its results are in that "
                                f"run's store: `emotune results {other}`")
        return EmotuneError(f"no results for {run} in {path}: {run / 'summary.json'} was not recorded (made before "
                            f"emotune recorded every evaluation); run the same `emotune eval ... --out {run}` again: its "
                            "finished tasks are reused, not redone, and recorded")
    where = f"no result store at {path}" if not exists else \
        f"no results for {run}{f' of suite {suite}' if suite else ''} in {path}"
    return EmotuneError(f"{where}: run {WHAT_TO_RUN.format(run=run_dir)}, or pass --store")


def open_store(run_dir: str, store: str | None) -> tuple[Store, str]:
    run = Path(run_dir)
    path = Path(store) if store else default_store_path(run)
    if not path.is_file():
        raise nothing_to_show(run_dir, path, exists=False)
    return Store(path, create=False), str(run.resolve())


def table(rows: list[Row], best_step: int | None = None) -> str:
    if not rows:
        return "(no results)"
    tasks = sorted({r.task for r in rows})
    steps = sorted({(r.step, r.fingerprint) for r in rows})
    latest: dict[tuple, Row] = {}
    for r in rows:  # several suite versions: the newest row per (step, fingerprint, task) wins
        key = (r.step, r.fingerprint, r.task)
        if key not in latest or r.created_at >= latest[key].created_at:
            latest[key] = r
    head = ["step", "tokens"] + tasks + ["avg", "jobs"]
    lines = [head]
    for step, fp in steps:
        cells, vals, states = [f"{step}*" if step == best_step else str(step)], [], {}
        tok = next((latest[(step, fp, t)].tokens_seen for t in tasks if (step, fp, t) in latest), None)
        cells.append(f"{tok:,}" if tok is not None else "-")
        for t in tasks:
            r = latest.get((step, fp, t))
            if r is None:
                cells.append("")
                continue
            states[r.status] = states.get(r.status, 0) + 1
            v = main_metric(r.metrics) if r.status == "finished" else None
            if v is not None:
                vals.append(v)
            cells.append(_cell(v, main_stderr(r.metrics)) if v is not None else r.status)
        cells.append(f"{100 * sum(vals) / len(vals):.2f}" if vals and len(vals) == len(tasks) else "-")
        cells.append(" ".join(f"{n} {s}" for s, n in sorted(states.items())))
        lines.append(cells)
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    out = ["  ".join(c.rjust(w) if i < len(head) - 1 else c for i, (c, w) in enumerate(zip(row, widths)))
           for row in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    if best_step is not None and any(step == best_step for step, _ in steps):
        out.append(f"* best checkpoint (step {best_step})")
    problems = [r for r in rows if r.status in ("failed", "blocked")]
    for r in problems:
        out.append(f"{r.status}: step {r.step} {r.task}: {(r.error or '').strip().splitlines()[0] if r.error else ''}")
    return "\n".join(out)


def _cell(v: float, se: float | None) -> str:
    """A 0..1 score in percent (`87.50 ± 3.10` with its standard error), anything else as it is."""
    if 0 <= v <= 1:
        return f"{100 * v:.2f}" + (f" ± {100 * se:.2f}" if se is not None else "")
    return f"{v:.4g}" + (f" ± {se:.2g}" if se is not None else "")


def main(argv: list[str]) -> int:
    ap = ArgumentParser(prog="emotune results", description="Show the evaluation results of a run.")
    ap.add_argument("run_dir", metavar="RUN_DIR", help="a training run's output_dir (evaluated by `emotune watch` or "
                    "`emotune eval --model RUN_DIR/checkpoint-N`), or an `emotune eval --out` folder")
    ap.add_argument("--store", help="result database (default RUN_DIR/eval/results.sqlite)")
    ap.add_argument("--suite", help="only this suite's rows (the name it was evaluated under: a shipped suite, "
                    f"{', '.join(shipped_suites())}, a suite file's stem, or custom for `emotune eval --tasks`)")
    ap.add_argument("--json", action="store_true", help="every row as JSON")
    ap.add_argument("--best", action="store_true",
                    help="only the best checkpoint's rows (RUN_DIR/best.json: lowest validation loss unless the run chose another metric)")
    args = ap.parse_args(argv)
    store, run = open_store(args.run_dir, args.store)
    with store:  # closed even when the store turns out damaged: no -wal / -shm left behind
        rows = store.rows(run, suite=args.suite)
    if not rows:
        raise nothing_to_show(args.run_dir, store.path, args.suite)
    best = read_best(args.run_dir)
    if args.best:
        if best is None:
            raise EmotuneError(f"{Path(args.run_dir) / 'best.json'}: no best checkpoint recorded yet (the run writes it "
                               "with each checkpoint once metric_for_best_model has a value)")
        rows = [r for r in rows if r.step == best["step"]]
    try:
        if args.json:
            json.dump([dict(r.to_dict(), best=best is not None and r.step == best["step"]) for r in rows], sys.stdout, indent=2)
            print()
        else:
            print(f"{run}  ({store.path})")
            if best is not None:
                print(f"best checkpoint: step {best['step']} ({best.get('metric')} {best.get('value')})")
            print(table(rows, best["step"] if best else None))
        sys.stdout.flush()
    except BrokenPipeError:  # `emotune results RUN | head`
        sys.stdout = None  # type: ignore[assignment]  (nothing more to write; no error at exit)
    return 0
