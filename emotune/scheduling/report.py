"""`emotune report RUN_DIR [RUN_DIR...] --out DIR`: plots, a self-contained HTML page and the paper's table.

Reads each run's result store (RUN_DIR/eval/results.sqlite, or --store) and training log
(RUN_DIR/train_log.jsonl) and writes into DIR:

    acc_vs_step.png     accuracy per task and on average against the checkpoint step, one line per run
    acc_vs_tokens.png   the same against tokens seen
    final_by_task.png   the last fully evaluated checkpoint of each run, task by task, runs side by side
    training.png        training curves: loss, plain CE, DEMD, learning rate (and validation CE)
    results.md          Markdown table in the paper's layout: one row per objective, one column per task + Avg.
    report.html         all of the above in one file (images embedded as data: URIs; opens offline)

Runs are labelled by their objective (MLE, TaiLr, MixCE, EMO), so EMO vs MLE vs TaiLr vs MixCE sit side by side.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

from emotune.atomic import read_jsonl, write_bytes
from emotune.errors import ArgumentParser, EmotuneError
from emotune.scheduling.discovery import read_best, read_run_config
from emotune.scheduling.results import MAIN_METRICS, main_metric
from emotune.scheduling.store import Store, default_store_path

log = logging.getLogger("emotune.scheduling.report")

# The paper's names and column order (Table 3); other tasks follow in name order.
TASK_NAMES = {"tweet_eval": "TE", "sst2": "SST-2", "trec": "TREC", "subj": "Subj", "cr": "CR",
              "rotten_tomatoes": "RT", "ag_news": "AG", "mmlu": "MMLU"}
OBJECTIVE_NAMES = {"mle": "MLE", "tailr": "TaiLr", "mixce": "MixCE", "emo": "EMO", "kd_forward": "KD (forward KL)",
                   "kd_reverse": "KD (reverse KL)"}
PLOTS = ("acc_vs_step", "acc_vs_tokens", "final_by_task", "training")


@dataclass
class RunData:
    path: Path
    label: str
    objective: str | None
    # task -> step -> (metric, tokens_seen)
    scores: dict[str, dict[int, tuple[float, int | None]]] = field(default_factory=dict)
    tokens: dict[int, int | None] = field(default_factory=dict)
    train: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # task -> step -> every metric of that evaluation (oracle metrics, perplexities, ...)
    metrics: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    best: dict | None = None  # the run's best checkpoint (best.json), marked in the tables

    def tasks(self) -> list[str]:
        return list(self.scores)

    def complete_steps(self, tasks: list[str]) -> list[int]:
        """Steps at which every task of `tasks` has a finished result."""
        steps = set(self.tokens)
        return sorted(s for s in steps if all(s in self.scores.get(t, {}) for t in tasks))


def task_order(tasks) -> list[str]:
    known = [t for t in TASK_NAMES if t in tasks]
    return known + sorted(t for t in tasks if t not in TASK_NAMES)


def read_train_log(path: Path) -> tuple[list[dict], list[dict]]:
    train, evals = [], []
    if not path.is_file():
        return train, evals
    # a torn last line: the log of a run still writing (or killed mid-write) is read up to it
    for rec in read_jsonl(path, on_bad_line=lambda i, _: log.warning("%s line %d: not a JSON record, skipped", path, i)):
        if "step" not in rec:
            continue
        (train if "loss" in rec else evals if "eval_ce" in rec else []).append(rec)
    return train, evals


def run_objective(run_dir: Path) -> str | None:
    """The objective the run trained with, from the config.yaml the training stage wrote (YAML)."""
    cfg = read_run_config(run_dir)
    if cfg is None:
        return None
    name = (cfg.get("objective") or {}).get("name") if isinstance(cfg.get("objective"), dict) else None
    if not isinstance(name, str):
        raise EmotuneError(f"run config {run_dir / 'config.yaml'}: objective.name is missing or not a string")
    return name


def load_run(run_dir: str, store_path: str | None, suite: str | None) -> RunData:
    path = Path(run_dir).resolve()
    if not path.is_dir():
        raise EmotuneError(f"run directory {run_dir} does not exist")
    spath = Path(store_path) if store_path else default_store_path(path)
    rows = []
    if spath.is_file():
        with Store(spath, create=False) as store:
            rows = store.rows(str(path), suite=suite)
    train, evals = read_train_log(path / "train_log.jsonl")
    if not rows and not train:
        raise EmotuneError(f"{run_dir}: no evaluation results ({spath}) and no training log (train_log.jsonl)")
    objective = next((r.objective for r in rows if r.objective), None) or run_objective(path)
    data = RunData(path, "", objective, train=train, evals=evals, best=read_best(path))
    latest: dict[tuple[str, int], object] = {}
    for r in rows:  # the newest row per (task, step) — a re-exported step or a new suite version wins
        if r.status == "finished" and ((r.task, r.step) not in latest or r.created_at >= latest[(r.task, r.step)].created_at):
            latest[(r.task, r.step)] = r
        if r.status in ("failed", "blocked"):
            data.problems.append(f"step {r.step} {r.task}: {r.status}: {(r.error or '').strip().splitlines()[0] if r.error else ''}")
    for (task, step), r in sorted(latest.items()):
        data.metrics.setdefault(task, {})[step] = dict(r.metrics or {})
        v = main_metric(r.metrics)
        if v is not None and any(k in (r.metrics or {}) for k in MAIN_METRICS):  # a 0..1 score (accuracy, MAUVE)
            data.scores.setdefault(task, {})[step] = (v, r.tokens_seen)
        data.tokens[step] = r.tokens_seen
    return data


def label_runs(runs: list[RunData]) -> None:
    base = [OBJECTIVE_NAMES.get(r.objective or "", r.objective or r.path.name) for r in runs]
    for r, b in zip(runs, base):
        r.label = b if base.count(b) == 1 else f"{b} ({r.path.name})"


# ---------------------------------------------------------------------------------------------- plots

def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _grid(n: int):
    import matplotlib.pyplot as plt

    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False, layout="constrained")
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


def plot_accuracy(runs: list[RunData], tasks: list[str], x: str) -> bytes:
    panels = tasks + ["average"]
    fig, axes = _grid(len(panels))
    for ax, task in zip(axes, panels):
        for i, r in enumerate(runs):
            if task == "average":
                steps = r.complete_steps(tasks) if tasks else []
                pts = [(s, r.tokens.get(s), sum(r.scores[t][s][0] for t in tasks) / len(tasks)) for s in steps]
            else:
                pts = [(s, tok, v) for s, (v, tok) in sorted(r.scores.get(task, {}).items())]
            if x == "tokens":
                pts = [p for p in pts if p[1] is not None]
            if pts:
                xs = [p[0] if x == "step" else p[1] for p in pts]
                ax.plot(xs, [100 * p[2] for p in pts], marker="o", label=r.label, color=f"C{i}")
        ax.set_title(TASK_NAMES.get(task, task) if task != "average" else "Average")
        ax.set_xlabel("step" if x == "step" else "tokens seen")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    if axes[0].lines:
        axes[0].legend(fontsize=8)
    fig.suptitle(f"Accuracy against {'checkpoint step' if x == 'step' else 'tokens seen'}")
    return _png(fig)


def final_table(runs: list[RunData], tasks: list[str]) -> list[tuple[RunData, int | None, dict[str, float]]]:
    out = []
    for r in runs:
        steps = r.complete_steps(tasks) if tasks else []
        step = steps[-1] if steps else None
        vals = {t: r.scores[t][step][0] for t in tasks} if step is not None else {}
        if step is None:  # nothing complete: show what there is at each task's last step
            vals = {t: r.scores[t][max(r.scores[t])][0] for t in tasks if r.scores.get(t)}
        out.append((r, step, vals))
    return out


def plot_final(runs: list[RunData], tasks: list[str]) -> bytes:
    import matplotlib.pyplot as plt
    import numpy as np

    table = final_table(runs, tasks)
    cols = tasks + ["Avg."]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(cols) * max(len(runs), 1) * 0.6 + 3), 3.6), layout="constrained")
    width = 0.8 / max(len(runs), 1)
    xs = np.arange(len(cols))
    for i, (r, step, vals) in enumerate(table):
        ys = [100 * vals.get(t, float("nan")) for t in tasks]
        ys.append(100 * sum(vals.values()) / len(tasks) if tasks and len(vals) == len(tasks) else float("nan"))
        ax.bar(xs + (i - (len(runs) - 1) / 2) * width, ys, width, color=f"C{i}",
               label=f"{r.label} (step {step})" if step is not None else r.label)
    ax.set_xticks(xs, [TASK_NAMES.get(t, t) for t in tasks] + ["Avg."])
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Last fully evaluated checkpoint, per task")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def plot_training(runs: list[RunData]) -> bytes:
    keys = [("loss", "training loss"), ("ce", "plain CE"), ("demd", "DEMD"), ("lr", "learning rate")]
    if any(r.evals for r in runs):
        keys.append(("eval_ce", "validation CE"))
    fig, axes = _grid(len(keys))
    for ax, (key, title) in zip(axes, keys):
        for i, r in enumerate(runs):
            recs = r.evals if key == "eval_ce" else r.train
            pts = [(rec["step"], rec[key]) for rec in recs if isinstance(rec.get(key), (int, float))]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=r.label, color=f"C{i}")
        if not ax.lines:
            ax.text(0.5, 0.5, "not logged (EMO runs log DEMD)" if key == "demd" else "not logged",
                    ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle("Training curves")
    return _png(fig)


# ---------------------------------------------------------------------------------------------- tables

def _objective_rank(r: RunData) -> tuple:
    order = list(OBJECTIVE_NAMES)
    return (order.index(r.objective) if r.objective in order else len(order), r.label)


def markdown_table(runs: list[RunData], tasks: list[str]) -> str:
    table = final_table(runs, tasks)
    head = ["Objective"] + [TASK_NAMES.get(t, t) for t in tasks] + ["Avg."]
    rows = []
    for r, step, vals in table:
        avg = sum(vals.values()) / len(tasks) if tasks and len(vals) == len(tasks) else None
        rows.append((r, step, [vals.get(t) for t in tasks] + [avg]))
    best = [max((row[2][i] for row in rows if row[2][i] is not None), default=None) for i in range(len(head) - 1)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":---"] + [":---:"] * (len(head) - 1)) + "|"]
    for r, _step, vals in sorted(rows, key=lambda x: _objective_rank(x[0])):
        cells = []
        for i, v in enumerate(vals):
            txt = f"{100 * v:.2f}" if v is not None else "–"
            cells.append(f"**{txt}**" if v is not None and len(rows) > 1 and v == best[i] else txt)
        lines.append(f"| {r.label} | " + " | ".join(cells) + " |")
    steps = ", ".join(f"{r.label}: step {s}" if s is not None else f"{r.label}: incomplete" for r, s, _ in table)
    lines.append("")
    lines.append(f"Accuracy (%) of the last checkpoint evaluated on every task ({steps}); best per column in bold.")
    note = best_line(runs)
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def best_line(runs: list[RunData]) -> str:
    """Each run's best checkpoint as the training stage recorded it (the paper keeps the lowest validation loss)."""
    parts = [f"{r.label}: step {r.best['step']} ({r.best.get('metric')} {r.best.get('value'):.4g})"
             if isinstance(r.best.get("value"), (int, float)) else f"{r.label}: step {r.best['step']}"
             for r in sorted(runs, key=_objective_rank) if r.best]
    return f"Best checkpoint of each run, marked ★ in the per-checkpoint tables: {'; '.join(parts)}." if parts else ""


def grouped_table(runs: list[RunData]) -> str:
    """Every metric of every task at each run's last evaluated step, runs of the same objective
    pooled: mean ± std over them (seeds), n = number of runs. Markdown."""
    import statistics

    groups: dict[str, list[RunData]] = {}
    for r in sorted(runs, key=_objective_rank):
        groups.setdefault(OBJECTIVE_NAMES.get(r.objective or "", r.objective or r.path.name), []).append(r)
    columns: list[tuple[str, str]] = []
    for r in runs:
        for task in task_order(r.metrics):
            last = r.metrics[task][max(r.metrics[task])]
            columns += [(task, k) for k in sorted(last) if (task, k) not in columns and isinstance(last[k], (int, float))]
    if not columns:
        return ""
    head = ["Objective", "runs"] + [f"{TASK_NAMES.get(t, t)} {k}" for t, k in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":---", ":---:"] + [":---:"] * len(columns)) + "|"]
    for name, members in groups.items():
        cells = []
        for task, key in columns:
            vals = [r.metrics[task][max(r.metrics[task])].get(key) for r in members if r.metrics.get(task)]
            vals = [float(v) for v in vals if isinstance(v, (int, float))]
            if not vals:
                cells.append("–")
            elif len(vals) == 1:
                cells.append(f"{vals[0]:.4g}")
            else:
                cells.append(f"{statistics.mean(vals):.4g} ± {statistics.stdev(vals):.2g}")
        lines.append(f"| {name} | {len(members)} | " + " | ".join(cells) + " |")
    lines += ["", "Every metric at each run's last evaluated checkpoint; mean ± sample std over the runs of an objective (seeds)."]
    return "\n".join(lines) + "\n"


def _md_to_html_table(md: str) -> str:
    lines = [line for line in md.splitlines() if line.startswith("|")]
    out = ["<table>"]
    for i, line in enumerate(lines):
        if i == 1:
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        tag = "th" if i == 0 else "td"
        row = []
        for c in cells:
            bold = c.startswith("**")
            c = html.escape(c.strip("*"))
            row.append(f"<{tag}>{'<b>' + c + '</b>' if bold else c}</{tag}>")
        out.append("<tr>" + "".join(row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def steps_table_html(r: RunData, tasks: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["step", "tokens seen"] + [TASK_NAMES.get(t, t) for t in tasks] + ["Avg."])
    body = []
    best = r.best["step"] if r.best else None
    for s in sorted(r.tokens):
        vals = [r.scores.get(t, {}).get(s, (None, None))[0] for t in tasks]
        avg = sum(vals) / len(vals) if vals and all(v is not None for v in vals) else None
        tok = r.tokens.get(s)
        cells = [f"{s} ★ best" if s == best else str(s), f"{tok:,}" if tok is not None else "–"] + \
            [f"{100 * v:.2f}" if v is not None else "–" for v in vals + [avg]]
        row = "".join(f"<td>{c}</td>" for c in cells)
        body.append(f"<tr class='best'>{row}</tr>" if s == best else f"<tr>{row}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


_CHECK_SCRIPT = """
<script>
// Marks every plot that the browser decoded, so a headless browser (and a reader) can check the page.
window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('img.plot'), ok = 0;
  imgs.forEach(function (img) {
    var good = img.complete && img.naturalWidth > 0 && img.naturalHeight > 0;
    img.setAttribute('data-rendered', good ? 'yes' : 'no');
    if (good) ok += 1;
  });
  document.body.setAttribute('data-plots-rendered', ok + '/' + imgs.length);
});
</script>
"""


def write_report(runs: list[RunData], out: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    tasks = task_order({t for r in runs for t in r.tasks()})
    images = {
        "acc_vs_step": plot_accuracy(runs, tasks, "step"),
        "acc_vs_tokens": plot_accuracy(runs, tasks, "tokens"),
        "final_by_task": plot_final(runs, tasks),
        "training": plot_training(runs),
    }
    written: dict[str, Path] = {}
    for name, data in images.items():
        written[name] = write_bytes(out / f"{name}.png", data)
    md = markdown_table(runs, tasks)
    grouped = grouped_table(runs)
    written["markdown"] = write_bytes(out / "results.md", (md + ("\n" + grouped if grouped else "")).encode())
    captions = {"acc_vs_step": "Accuracy per task and on average against the checkpoint step",
                "acc_vs_tokens": "Accuracy per task and on average against tokens seen",
                "final_by_task": "Last fully evaluated checkpoint of each run, task by task",
                "training": "Training curves: loss, plain CE, DEMD, learning rate"}
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>emotune report</title>",
             "<style>body{font-family:sans-serif;max-width:1300px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}"
             "th{background:#eee}tr.best td{font-weight:bold;background:#fff6d5}"
             "img{max-width:100%;border:1px solid #ddd}figure{margin:1.5em 0}"
             ".problems{color:#a00}</style></head><body>",
             "<h1>emotune report</h1>",
             "<p>Runs: " + ", ".join(f"<b>{html.escape(r.label)}</b> (<code>{html.escape(str(r.path))}</code>)"
                                     for r in runs) + "</p>",
             "<h2>Results (paper layout)</h2>", _md_to_html_table(md),
             "<p>" + html.escape(md.split("\n\n")[1].strip()) + "</p>"]
    if best_line(runs):
        parts.append("<p>" + html.escape(best_line(runs)) + "</p>")
    if grouped:
        parts += ["<h2>All metrics, runs of an objective pooled</h2>", _md_to_html_table(grouped),
                  "<p>" + html.escape(grouped.strip().splitlines()[-1]) + "</p>"]
    for name in PLOTS:
        b64 = base64.b64encode(images[name]).decode()
        parts.append(f"<figure><img class='plot' id='{name}' alt='{html.escape(captions[name])}' "
                     f"src='data:image/png;base64,{b64}'><figcaption>{html.escape(captions[name])}</figcaption></figure>")
    parts.append("<h2>Every checkpoint</h2>")
    for r in runs:
        parts.append(f"<h3>{html.escape(r.label)}</h3>" + steps_table_html(r, tasks))
        if r.problems:
            parts.append("<ul class='problems'>" + "".join(f"<li>{html.escape(p)}</li>" for p in r.problems) + "</ul>")
    parts.append(_CHECK_SCRIPT + "</body></html>")
    written["html"] = write_bytes(out / "report.html", "\n".join(parts).encode())
    return written


def make_report(run_dirs: list[str], out: str, store: str | None = None, suite: str | None = None) -> dict[str, Path]:
    if Path(out).exists() and not Path(out).is_dir():
        raise EmotuneError(f"--out {out}: is a file, not a folder for the report")
    if store is not None and not Path(store).is_file():
        raise EmotuneError(f"--store {store}: no result store there")
    runs = [load_run(d, store, suite) for d in run_dirs]
    label_runs(runs)
    from emotune.scheduling.report_pairwise import add_pairwise_section  # instruct suites' pairwise judgments

    return add_pairwise_section(run_dirs, write_report(runs, Path(out)), store)


def main(argv: list[str]) -> int:
    ap = ArgumentParser(prog="emotune report", description="Plots, an HTML page and the paper's table.")
    ap.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--store", help="one shared result database for all runs (default: each RUN_DIR/eval/results.sqlite)")
    ap.add_argument("--suite", help="only this suite's results")
    args = ap.parse_args(argv)
    written = make_report(args.run_dirs, args.out, args.store, args.suite)
    print(Path(written["markdown"]).read_text())
    print(f"report: {written['html']}")
    return 0
