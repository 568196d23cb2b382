"""`emotune report RUN_DIR [RUN_DIR...] --out DIR`: plots, a self-contained HTML page and the paper's table.

Reads each run's result store (RUN_DIR/eval/results.sqlite, or --store), training log
(RUN_DIR/train_log.jsonl), config.yaml and best.json (emotune.report.data) and writes into DIR:

    metrics_vs_step.png    every metric with a direction (accuracy, MAUVE, PPL_oracle, PPL_test, forward /
                           reverse CE, win rate ...) against the checkpoint step, the headline metrics first
    metrics_vs_tokens.png  the same against tokens seen
    final_by_task.png      the last fully evaluated checkpoint of each objective, task by task (accuracy tasks)
    training.png           training curves: loss, plain CE, DEMD, learning rate, validation CE
    results.md             the headline table, the paper's layout (one row per run, a column per task + Avg.)
                           and every metric pooled per objective
    report.html            all of the above in one file (images embedded as data: URIs; opens offline)

Runs are grouped by objective (MLE, TaiLr, MixCE, EMO): colour = objective in every plot, a thin line per
run (seed), a bold mean ± std band per objective, ★ on each run's best checkpoint (emotune.report.plots).

The page is a list of sections (SECTIONS): each is a function of the ReportContext that returns a Section
(title, HTML, Markdown, plots) or None. Another report part (e.g. pairwise judge win rates) is one more
function in that tuple.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Callable

from emotune.atomic import write_bytes
from emotune.errors import ArgumentParser, EmotuneError
from emotune.report import demo
from emotune.report.data import (
    METRICS,
    RunData,
    directed_metrics,
    label_runs,
    load_run,
    objective_rank,
    task_order,
)
from emotune.report.pairwise import pairwise_parts
from emotune.report.parts import Plot, ReportContext, ReportOptions, Section
from emotune.report.plots import AVERAGE, plot_final, plot_metrics, plot_training
from emotune.report.tables import (
    best_line,
    final_table,
    grouped_table,
    headline_table,
    markdown_table,
    md_to_html_table,
    sample_counts,
    steps_table_html,
)
from emotune.tasks.suites import shipped_suites

ACCURACIES = ("accuracy", "acc", "accuracy_macro", "exact_match")
# OpenCompass reports MMLU twice (emotune.tasks.metrics.OPENCOMPASS_NAMES); the paper table shows `accuracy`
MMLU_NOTE = ("MMLU: accuracy over all questions, OpenCompass' `mmlu-weighted`; OpenCompass' headline `mmlu` "
             "(the mean over subjects) is `accuracy_macro`, in the pooled table and `emotune results`.")


def resolve_headline(runs: list[RunData], wanted: list[str]) -> list[tuple[str, str]]:
    """(task, metric) pairs for `task/metric` or `metric` items; every directed metric when none is given."""
    have = directed_metrics(runs)
    if not wanted:
        return have
    out: list[tuple[str, str]] = []
    for item in wanted:
        task, _, key = item.rpartition("/")
        if key not in METRICS:
            raise EmotuneError(f"report headline {item!r}: {key!r} is not a metric with a direction "
                               f"(one of {', '.join(sorted(METRICS))})")
        out += [p for p in have if p[1] == key and (not task or p[0] == task) and p not in out]
    return out


def _fig(plot: Plot) -> str:
    b64 = base64.b64encode(plot.png).decode()
    cap = html.escape(plot.caption)
    return (f"<figure><img class='plot' id='{plot.name}' alt='{cap}' src='data:image/png;base64,{b64}'>"
            f"<figcaption>{cap}</figcaption></figure>")


# ---------------------------------------------------------------------------------------------- sections

def headline_section(ctx: ReportContext) -> Section | None:
    """What the runs show: each objective's mean ± std over seeds, then every metric against step and tokens."""
    if not ctx.panels:
        return None
    md = headline_table(ctx.runs, ctx.headline) if ctx.headline else ""
    counts = sample_counts(ctx.runs, ctx.headline)
    note = ("Mean ± sample standard deviation over each objective's runs (seeds) at each run's best checkpoint "
            "(the lowest validation loss, the paper's selection; the last evaluated checkpoint for a run that "
            "recorded none); ↑ higher / ↓ lower is better; the best mean per column in bold.")
    if counts:
        note += " " + "; ".join(f"{name}: {text}" for name, text in counts.items()) + "."
    if md:
        md += "\n" + note + "\n"
    panels = list(ctx.panels) + ([(AVERAGE, "accuracy")] if len(ctx.tasks) > 1 else [])
    plots = [Plot(f"metrics_vs_{x}", plot_metrics(ctx.runs, panels, x, f"Every metric against {label}", ctx.tasks),
                  f"Every metric against {label}: thin line = one run (seed), bold = mean over an objective's runs, "
                  "band = ± std, ★ = the run's best checkpoint, bars = the evaluator's standard error")
             for x, label in (("step", "the checkpoint step"), ("tokens", "tokens seen"))]
    body = (md_to_html_table(md) + f"<p>{html.escape(note)}</p>") if md else ""
    return Section("Headline: objectives compared", body, md, plots)


def paper_section(ctx: ReportContext) -> Section | None:
    """The paper's layout (Table 3): accuracy per task and on average, one row per run."""
    if not ctx.tasks:
        return None
    md = markdown_table(ctx.runs, ctx.tasks)
    if "mmlu" in ctx.tasks:
        md += "\n\n" + MMLU_NOTE + "\n"
    parts = md.split("\n\n")
    body = md_to_html_table(md) + "".join(f"<p>{html.escape(p.strip())}</p>" for p in parts[1:])
    plot = Plot("final_by_task", plot_final(ctx.runs, ctx.tasks, final_table(ctx.runs, ctx.tasks)),
                "Last fully evaluated checkpoint, task by task: mean ± std over each objective's runs")
    return Section("Results (paper layout)", body, md, [plot])


def pooled_section(ctx: ReportContext) -> Section | None:
    md = grouped_table(ctx.runs)
    if not md:
        return None
    return Section("All metrics, runs of an objective pooled", md_to_html_table(md) +
                   "<p>" + html.escape(md.strip().splitlines()[-1]) + "</p>", md)


def training_section(ctx: ReportContext) -> Section | None:
    if not any(r.train or r.evals for r in ctx.runs):
        return None
    return Section("Training", "", "", [Plot("training", plot_training(ctx.runs),
                                             "Training curves: loss, plain CE, DEMD, learning rate, validation CE")])


def checkpoints_section(ctx: ReportContext) -> Section:
    parts = []
    best = best_line(ctx.runs)
    if best:
        parts.append(f"<p>{html.escape(best)}</p>")
    for r in ctx.runs:
        parts.append(f"<h3>{html.escape(r.label)} <small><code>{html.escape(str(r.path))}</code></small></h3>"
                     + steps_table_html(r, ctx.panels))
        if r.problems:
            parts.append("<ul class='problems'>" + "".join(f"<li>{html.escape(p)}</li>" for p in r.problems) + "</ul>")
    return Section("Every checkpoint", "\n".join(parts))


def pairwise_section(ctx: ReportContext) -> Section | None:
    """Instruct suites: a win / tie / lose bar per judge and pair (the paper's Figures 3-6), with the lengths."""
    parts = pairwise_parts([str(r.path) for r in ctx.runs], ctx.store)
    if parts is None:
        return None
    md, table, png = parts
    caption = "Pairwise judgments: win / tie / lose of side A per judge and pair, average response lengths"
    return Section("Pairwise judgments (A vs B)", table, md, [Plot("pairwise", png, caption)])


# The page, in order. Add a report part here: a function (ReportContext) -> Section | None.
SECTIONS: tuple[Callable[[ReportContext], Section | None], ...] = (
    demo.verdict_section, headline_section, demo.icl_section, demo.calibration_section, paper_section,
    pooled_section, pairwise_section, training_section, checkpoints_section)


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
_STYLE = ("<style>body{font-family:sans-serif;max-width:1300px;margin:2em auto;color:#222}"
          "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}"
          "th{background:#eee}tr.best td{font-weight:bold;background:#fff6d5}"
          "img{max-width:100%;border:1px solid #ddd}figure{margin:1.5em 0}.intro{font-size:1.05em}"
          ".problems{color:#a00}</style>")


def write_report(runs: list[RunData], out: Path, options: ReportOptions | None = None,
                 sections: tuple[Callable[[ReportContext], Section | None], ...] = SECTIONS,
                 store: str | None = None) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    options = options or ReportOptions()
    runs = sorted(runs, key=objective_rank)  # MLE, TaiLr, MixCE, EMO, then the rest: the same order everywhere
    headline = resolve_headline(runs, options.headline)
    out.mkdir(parents=True, exist_ok=True)
    panels = headline + [p for p in directed_metrics(runs) if p not in headline]
    # the paper's table and the average: tasks scored by an accuracy (a MAUVE task is not averaged with them)
    accuracy_tasks = {t for r in runs for t, by_step in r.metrics.items() for m in by_step.values() if any(k in m for k in ACCURACIES)}
    ctx = ReportContext(runs, options, task_order({t for r in runs for t in r.tasks()} & accuracy_tasks), headline, panels,
                        store)
    built = [s for s in (make(ctx) for make in sections) if s is not None]
    written: dict[str, Path] = {}
    for s in built:
        for p in s.plots:
            written[p.name] = write_bytes(out / f"{p.name}.png", p.png)
    md = f"# {options.title}\n\n" + (options.intro + "\n\n" if options.intro else "") + \
        "\n".join(f"## {s.title}\n\n{s.markdown}" for s in built if s.markdown)
    written["markdown"] = write_bytes(out / "results.md", md.encode())
    page = ["<!DOCTYPE html><html><head><meta charset='utf-8'>", f"<title>{html.escape(options.title)}</title>",
            _STYLE, "</head><body>", f"<h1>{html.escape(options.title)}</h1>"]
    if options.intro:
        page.append(f"<p class='intro'>{html.escape(options.intro)}</p>")
    page.append("<p>Runs: " + ", ".join(f"<b>{html.escape(r.label)}</b>" for r in runs) + "</p>")
    for s in built:
        page += [f"<h2>{html.escape(s.title)}</h2>", s.html, *(_fig(p) for p in s.plots)]
    page.append(_CHECK_SCRIPT + "</body></html>")
    written["html"] = write_bytes(out / "report.html", "\n".join(page).encode())
    return written


def make_report(run_dirs: list[str], out: str, store: str | None = None, suite: str | None = None,
                options: ReportOptions | None = None) -> dict[str, Path]:
    if Path(out).exists() and not Path(out).is_dir():
        raise EmotuneError(f"--out {out}: is a file, not a folder for the report")
    if store is not None and not Path(store).is_file():
        raise EmotuneError(f"--store {store}: no result store there")
    runs = [load_run(d, store, suite) for d in run_dirs]
    label_runs(runs)
    return write_report(runs, Path(out), options, store=store)


def main(argv: list[str]) -> int:
    ap = ArgumentParser(prog="emotune report", description="Plots, an HTML page and the paper's table.")
    ap.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="training runs' output_dirs and / or `emotune "
                    "eval --out` folders, each with its results in RUN_DIR/eval/results.sqlite (or --store)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--store", help="one shared result database for all runs (default: each RUN_DIR/eval/results.sqlite)")
    ap.add_argument("--suite", help="only this suite's results (the name it was evaluated under: a shipped suite, "
                    f"{', '.join(shipped_suites())}, a suite file's stem, or custom for `emotune eval --tasks`)")
    ap.add_argument("--title", default=ReportOptions.title, help="the page's title")
    ap.add_argument("--headline", action="append", default=[], metavar="TASK/METRIC",
                    help="lead with this metric, e.g. synthetic_oracle/mauve, or mauve for every task's (repeatable); "
                         "default: every metric with a direction")
    args = ap.parse_args(argv)
    written = make_report(args.run_dirs, args.out, args.store, args.suite, ReportOptions(args.title, "", args.headline))
    print(Path(written["markdown"]).read_text())
    print(f"report: {written['html']}")
    return 0
