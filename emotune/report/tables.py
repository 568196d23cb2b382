"""The report's tables, as Markdown (results.md, the console) and HTML: the headline (per objective,
mean ± std over seeds), the paper's layout, every metric pooled, and every checkpoint of a run."""

from __future__ import annotations

import html

from emotune.report.data import (
    METRICS,
    STDERR_SUFFIX,
    RunData,
    groups,
    is_number,
    mean_std,
    metric_scale,
    objective_rank,
    task_name,
    task_order,
)


def final_table(runs: list[RunData], tasks: list[str]) -> list[tuple[RunData, int | None, dict[str, float]]]:
    """Each run's last step evaluated on every task (or, when none is, each task's last step)."""
    out = []
    for r in runs:
        steps = r.complete_steps(tasks) if tasks else []
        step = steps[-1] if steps else None
        vals = {t: r.scores[t][step][0] for t in tasks} if step is not None else {}
        if step is None:
            vals = {t: r.scores[t][max(r.scores[t])][0] for t in tasks if r.scores.get(t)}
        out.append((r, step, vals))
    return out


def _fmt(v: float) -> str:
    return f"{v:.2f}" if abs(v) >= 10 else f"{v:.4g}" if abs(v) >= 1 else f"{v:.4f}"


def headline_table(runs: list[RunData], panels: list[tuple[str, str]]) -> str:
    """Per objective: mean ± sample std over its runs (seeds) of each headline metric at each run's best
    checkpoint (RunData.selected_step: lowest validation loss; the last evaluated where none was recorded),
    the number of runs, the best mean per column in bold. Markdown."""
    names = [METRICS[k][0] for _, k in panels]
    head = ["Objective", "seeds"] + [
        (f"{n}" if names.count(n) == 1 else f"{task_name(t)} {n}") + (" (%)" if METRICS[k][2] else "")
        + (" ↑" if METRICS[k][1] else " ↓") for (t, k), n in zip(panels, names)]
    rows = []
    for name, members in groups(runs).items():
        cells: list[tuple[float, str] | None] = []
        for task, key in panels:
            vals = [v for v in (r.selected(task, key) for r in members) if v is not None]
            if not vals:
                cells.append(None)
                continue
            mean, std = mean_std([metric_scale(key) * v for v in vals])
            txt = _fmt(mean) + (f" ± {std:.2g}" if std is not None else "") + (f" (n={len(vals)})" if len(vals) != len(members) else "")
            cells.append((mean, txt))
        rows.append((name, len(members), cells))
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":---", ":---:"] + [":---:"] * len(panels)) + "|"]
    for name, n, cells in rows:
        out = []
        for i, c in enumerate(cells):
            col = [x[0] for _, _, cs in rows if (x := cs[i]) is not None]
            best = (max if METRICS[panels[i][1]][1] else min)(col) if col else None
            out.append("–" if c is None else f"**{c[1]}**" if len(rows) > 1 and c[0] == best else c[1])
        lines.append(f"| {name} | {n} | " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def sample_counts(runs: list[RunData], panels: list[tuple[str, str]]) -> dict[str, str]:
    """How a headline metric was sampled, where the evaluator recorded it: MAUVE's protocol (`<metric>_prefixes`,
    `<metric>_runs`, `<metric>_ceiling`) or an older summary's sample count (`<metric>_samples`)."""
    def seen(task: str, name: str) -> list[float]:
        return sorted({float(m[name]) for r in runs for m in r.metrics.get(task, {}).values() if is_number(m.get(name))})

    out = {}
    for task, key in panels:
        prefixes, n_runs, ceiling, samples = (seen(task, key + s) for s in ("_prefixes", "_runs", "_ceiling", "_samples"))
        if prefixes and n_runs:
            text = f"{max(prefixes):.0f} prefixes × {max(n_runs):.0f} sampling runs per checkpoint"
            if ceiling:
                text += f", the reference against the data's own text (ceiling) {sum(ceiling) / len(ceiling):.3f}"
            out[METRICS[key][0]] = text
        elif samples:
            n = int(max(samples))
            out[METRICS[key][0]] = f"{n} model samples against {n} reference samples per checkpoint"
    return out


def markdown_table(runs: list[RunData], tasks: list[str]) -> str:
    """The paper's layout: one row per run, a column per task + Avg., the best per column in bold."""
    table = final_table(runs, tasks)
    head = ["Objective"] + [task_name(t) for t in tasks] + ["Avg."]
    rows = []
    for r, step, vals in table:
        avg = sum(vals.values()) / len(tasks) if tasks and len(vals) == len(tasks) else None
        rows.append((r, step, [vals.get(t) for t in tasks] + [avg]))
    best = [max((row[2][i] for row in rows if row[2][i] is not None), default=None) for i in range(len(head) - 1)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":---"] + [":---:"] * (len(head) - 1)) + "|"]
    for r, _step, vals in sorted(rows, key=lambda x: objective_rank(x[0])):
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
             for r in sorted(runs, key=objective_rank) if r.best]
    return f"Best checkpoint of each run, marked ★ in the plots and the per-checkpoint tables: {'; '.join(parts)}." if parts else ""


def grouped_table(runs: list[RunData]) -> str:
    """Every metric of every task at each run's last evaluated step, runs of the same objective
    pooled: mean ± std over them (seeds), n = number of runs. Scores in percent as in the other tables;
    a metric's standard error (`<metric>_stderr`) beside it, not a column of its own. Markdown."""
    columns: list[tuple[str, str]] = []
    for r in runs:
        for task in task_order(r.metrics):
            last = r.metrics[task][max(r.metrics[task])]
            # the branch-point masses (calib/...) have their own table (demo.calibration_section);
            # MAUVE's single sampling runs (mauve/run0...) are summed up by mauve ± mauve_std;
            # a metric's stderr goes in its cell, not a column of its own
            columns += [(task, k) for k in sorted(last) if (task, k) not in columns and is_number(last[k])
                        and not k.startswith(("calib/", "mauve/run"))
                        and not (k.endswith(STDERR_SUFFIX) and k[: -len(STDERR_SUFFIX)] in last)]
    if not columns:
        return ""
    head = ["Objective", "runs"] + [f"{task_name(t)} {k}" + (" (%)" if _pct(k) else "") for t, k in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":---", ":---:"] + [":---:"] * len(columns)) + "|"]
    for name, members in groups(runs).items():
        cells = []
        for task, key in columns:
            last = [r.metrics[task][max(r.metrics[task])] for r in members if r.metrics.get(task)]
            vals = [float(m[key]) for m in last if is_number(m.get(key))]
            if not vals:
                cells.append("–")
                continue
            scale = 100.0 if _pct(key) else 1.0
            mean, std = mean_std([scale * v for v in vals])
            ses = [scale * float(m[key + STDERR_SUFFIX]) for m in last if is_number(m.get(key)) and is_number(m.get(key + STDERR_SUFFIX))]
            fmt = (lambda v: f"{v:.2f}") if _pct(key) else _fmt  # percent as in the paper's table: 50.00
            cells.append(fmt(mean) + (f" ± {std:.2g}" if std is not None else "")
                         + (f" (se {fmt(sum(ses) / len(ses))})" if ses else ""))
        lines.append(f"| {name} | {len(members)} | " + " | ".join(cells) + " |")
    lines += ["", "Every metric at each run's last evaluated checkpoint; mean ± sample std over the runs of an objective "
                  "(seeds); (se …): the evaluator's standard error of that metric, averaged over the runs; (%): in percent."]
    return "\n".join(lines) + "\n"


def _pct(key: str) -> bool:
    """Shown in percent wherever the report shows it (accuracies, win rate): METRICS' flag."""
    return key in METRICS and METRICS[key][2]


def md_to_html_table(md: str) -> str:
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


def steps_table_html(r: RunData, panels: list[tuple[str, str]]) -> str:
    """Every checkpoint of one run: tokens seen and each directed metric (± stderr where recorded); ★ = best."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["step", "tokens seen"] +
                   [f"{task_name(t)} {METRICS[k][0]}" for t, k in panels])
    body = []
    best = r.best["step"] if r.best else None
    for s in sorted(r.tokens):
        tok = r.tokens.get(s)
        cells = [f"{s} ★ best" if s == best else str(s), f"{tok:,}" if tok is not None else "–"]
        for task, key in panels:
            m = r.metrics.get(task, {}).get(s, {})
            v, se = m.get(key), m.get(key + "_stderr")
            txt = _fmt(metric_scale(key) * v) if is_number(v) else "–"
            cells.append(txt + (f" ± {metric_scale(key) * se:.2g}" if is_number(v) and is_number(se) else ""))
        row = "".join(f"<td>{c}</td>" for c in cells)
        body.append(f"<tr class='best'>{row}</tr>" if s == best else f"<tr>{row}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"
