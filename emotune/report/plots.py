"""The report's plots (PNG bytes, matplotlib Agg). Every plot draws runs the same way:

- colour = objective, the same colour in every plot (data.group_colors);
- one thin line per run (seed), with the evaluator's standard-error bars where the store has
  `<metric>_stderr`, and ★ on the run's best checkpoint (best.json: lowest validation loss);
- one bold line per objective: the mean over its runs at the steps they all reached, inside a band of
  ± one sample standard deviation (no band for a single run).
"""

from __future__ import annotations

import io

from emotune.report.data import (
    METRICS,
    RunData,
    group_colors,
    groups,
    metric_label,
    metric_scale,
    task_name,
)

AVERAGE = "__average__"  # the panel of the average main score over every task (the paper's Avg.)
Series = list[tuple[int, "int | None", float, "float | None"]]  # (step, tokens, value, stderr)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _grid(n: int, cols: int = 3):
    import matplotlib.pyplot as plt

    cols = max(1, min(n, cols))
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.4 * rows), squeeze=False, layout="constrained")
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


def average_series(r: RunData, tasks: list[str]) -> Series:
    """The run's main score averaged over `tasks`, at the steps where every task has one."""
    return [(s, r.tokens.get(s), sum(r.scores[t][s][0] for t in tasks) / len(tasks), None)
            for s in (r.complete_steps(tasks) if tasks else [])]


def format_x(ax, x: str) -> None:
    """Whole steps; tokens as 40k / 1.2M, a few ticks (long integers would overlap)."""
    from matplotlib.ticker import EngFormatter, MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(5, integer=True))
    if x == "tokens":
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))


def draw_groups(ax, per_run: list[tuple[RunData, Series]], colors: dict[str, str], x: str, scale: float = 1.0,
                mark_best: bool = True) -> None:
    """Thin line per run, bold mean ± std band per objective, ★ on each run's best checkpoint."""
    import numpy as np

    def xval(p):
        return p[0] if x == "step" else p[1]

    pooled: dict[str, list[Series]] = {}
    for r, series in per_run:
        pts = [p for p in series if xval(p) is not None]
        if not pts:
            continue
        c = colors[r.group]
        xs, ys = [xval(p) for p in pts], [scale * p[2] for p in pts]
        err = [scale * p[3] if p[3] is not None else 0.0 for p in pts]
        if any(p[3] is not None for p in pts):
            ax.errorbar(xs, ys, yerr=err, color=c, lw=0.8, alpha=0.55, marker=".", ms=3, capsize=2, elinewidth=0.8)
        else:
            ax.plot(xs, ys, color=c, lw=0.8, alpha=0.55, marker=".", ms=3)
        best = r.best.get("step") if (mark_best and r.best) else None
        hit = [(xv, yv) for p, xv, yv in zip(pts, xs, ys) if p[0] == best]
        if hit:
            ax.plot([hit[0][0]], [hit[0][1]], marker="*", ms=11, color=c, mec="black", mew=0.6, ls="none", zorder=5)
        pooled.setdefault(r.group, []).append(pts)
    for name, members in pooled.items():
        common = sorted(set.intersection(*(set(p[0] for p in s) for s in members)))
        if not common:
            continue
        at = [{p[0]: p for p in s} for s in members]
        xs = [float(np.mean([xval(m[s]) for m in at])) for s in common]
        vals = np.array([[scale * m[s][2] for m in at] for s in common])
        mean = vals.mean(1)
        ax.plot(xs, mean, color=colors[name], lw=2.6, label=f"{name} (n={len(members)})")
        if len(members) > 1:
            std = vals.std(1, ddof=1)
            ax.fill_between(xs, mean - std, mean + std, color=colors[name], alpha=0.18, lw=0)


def _legend(fig, ax, runs: list[RunData]) -> None:
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels()
    if any(r.best for r in runs):
        handles.append(Line2D([], [], marker="*", ms=11, color="gray", mec="black", mew=0.6, ls="none"))
        labels.append("best checkpoint (lowest validation loss)")
    handles.append(Line2D([], [], color="gray", lw=0.8, alpha=0.55))
    labels.append("one run (seed)")
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(handles), 6), fontsize=8, frameon=False)


def plot_metrics(runs: list[RunData], panels: list[tuple[str, str]], x: str, title: str,
                 tasks_for_average: list[str] | None = None) -> bytes:
    """One panel per (task, metric): every run and every objective's mean ± std against step or tokens."""
    colors = group_colors(runs)
    fig, axes = _grid(len(panels))
    for ax, (task, key) in zip(axes, panels):
        if task == AVERAGE:
            per_run = [(r, average_series(r, tasks_for_average or [])) for r in runs]
        else:
            per_run = [(r, r.series(task, key)) for r in runs]
        draw_groups(ax, per_run, colors, x, metric_scale(key))
        ax.set_title("Average accuracy over tasks" if task == AVERAGE else f"{task_name(task)}: {METRICS[key][0]}", fontsize=10)
        ax.set_xlabel("checkpoint step" if x == "step" else "tokens seen")
        format_x(ax, x)
        ax.set_ylabel(metric_label(key), fontsize=8)
        ax.grid(alpha=0.3)
        if not ax.lines:
            ax.text(0.5, 0.5, "no tokens-seen record" if x == "tokens" else "no results", ha="center", va="center",
                    transform=ax.transAxes, color="gray")
    _legend(fig, axes[0], runs)
    fig.suptitle(title)
    return _png(fig)


def plot_final(runs: list[RunData], tasks: list[str], table: list[tuple[RunData, int | None, dict[str, float]]]) -> bytes:
    """The last fully evaluated checkpoint, task by task: one bar per objective (mean over its runs, ± std)."""
    import matplotlib.pyplot as plt
    import numpy as np

    colors = group_colors(runs)
    cols = tasks + ["Avg."]
    pooled: dict[str, list[list[float]]] = {}
    for r, _step, vals in table:
        ys = [100 * vals.get(t, float("nan")) for t in tasks]
        ys.append(100 * sum(vals.values()) / len(tasks) if tasks and len(vals) == len(tasks) else float("nan"))
        pooled.setdefault(r.group, []).append(ys)
    names = [n for n in groups(runs) if n in pooled]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(cols) * max(len(names), 1) * 0.6 + 3), 3.6), layout="constrained")
    width = 0.8 / max(len(names), 1)
    xs = np.arange(len(cols))
    for i, name in enumerate(names):
        vals = np.array(pooled[name])
        mean = vals.mean(0)
        std = vals.std(0, ddof=1) if len(vals) > 1 else None
        ax.bar(xs + (i - (len(names) - 1) / 2) * width, mean, width, yerr=std, capsize=3, color=colors[name],
               label=f"{name} (n={len(vals)})")
    ax.set_xticks(xs, [task_name(t) for t in tasks] + ["Avg."])
    ax.set_ylabel("accuracy (%) ↑ higher is better")
    ax.set_title("Last fully evaluated checkpoint, per task (mean ± std over runs)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


TRAINING_KEYS = (("loss", "training loss", "↓"), ("ce", "plain CE", "↓"), ("demd", "DEMD", "↓"), ("lr", "learning rate", ""))


def plot_training(runs: list[RunData]) -> bytes:
    """Training curves from each run's train_log.jsonl (and validation CE), drawn like the metrics."""
    keys = list(TRAINING_KEYS) + ([("eval_ce", "validation CE", "↓")] if any(r.evals for r in runs) else [])
    colors = group_colors(runs)
    fig, axes = _grid(len(keys))
    for ax, (key, title, arrow) in zip(axes, keys):
        per_run = []
        for r in runs:
            recs = r.evals if key == "eval_ce" else r.train
            per_run.append((r, [(rec["step"], None, float(rec[key]), None) for rec in recs
                                if isinstance(rec.get(key), (int, float))]))
        draw_groups(ax, per_run, colors, "step", mark_best=key == "eval_ce")
        if not ax.lines:
            ax.text(0.5, 0.5, "not logged (EMO runs log DEMD)" if key == "demd" else "not logged",
                    ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        format_x(ax, "step")
        ax.set_ylabel(f"{title} {arrow + ' lower is better' if arrow else ''}", fontsize=8)
        ax.grid(alpha=0.3)
    _legend(fig, axes[0], runs)
    fig.suptitle("Training curves")
    return _png(fig)


def plot_ceiling(runs: list[RunData], task: str) -> bytes:
    """Accuracy per objective (bar: mean ± std over its runs at their best checkpoints; dots: the runs, with
    the evaluator's standard error) against the Bayes-optimal accuracy on the same rows (dashed)."""
    import matplotlib.pyplot as plt
    import numpy as np

    colors = group_colors(runs)
    fig, ax = plt.subplots(figsize=(5.2, 3.6), layout="constrained")
    names = list(groups(runs))
    for i, name in enumerate(names):
        members = groups(runs)[name]
        vals = [(100 * v, r.selected(task, "accuracy_stderr")) for r in members if (v := r.selected(task, "accuracy")) is not None]
        if not vals:
            continue
        ys = np.array([v for v, _ in vals])
        ax.bar(i, ys.mean(), 0.6, yerr=ys.std(ddof=1) if len(ys) > 1 else None, capsize=4, color=colors[name],
               alpha=0.75, label=f"{name} (n={len(ys)})")
        ax.errorbar(i + np.linspace(-0.15, 0.15, len(vals)), ys, yerr=[100 * se if se is not None else 0 for _, se in vals],
                    fmt="o", color="black", ms=3, elinewidth=0.8, capsize=2)
    bayes = [100 * v for r in runs if (v := r.selected(task, "bayes_accuracy")) is not None]
    if bayes:
        ax.axhline(float(np.mean(bayes)), color="black", ls="--", lw=1.2, label=f"Bayes-optimal {np.mean(bayes):.1f} %")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("accuracy (%) ↑ higher is better")
    ax.set_ylim(0, 100)
    ax.set_title(f"{task_name(task)}: accuracy against its Bayes ceiling", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)
