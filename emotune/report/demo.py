"""The report parts that answer the paper's question on the embedded demo: which of the paper's directions
reproduced (EMO against MLE), in-context accuracy against its Bayes ceiling, and calibration at the synthetic
language's branch points (emotune.eval.calibration's `calib/...` metrics, EMO's predicted optimum included).

Each part is a section function of the ReportContext (emotune.report.build.SECTIONS) that returns None
where its metrics are absent, so other reports are unchanged. Runs are compared at their best checkpoint
(RunData.selected_step: the lowest validation loss, the paper's selection). Every sentence is generated from
the numbers under a stated condition; none is a fixed verdict.
"""

from __future__ import annotations

import html
import math
import statistics

from emotune.report.data import METRICS, RunData, groups
from emotune.report.parts import Plot, Section
from emotune.report.plots import plot_ceiling
from emotune.report.tables import md_to_html_table

ORACLE = "synthetic_oracle"
BASE, CANDIDATE = "MLE", "EMO"
# What the paper reports for EMO against MLE: better on each of these (the metric's own direction).
PAPER_DIRECTIONS = {
    "mauve": "MAUVE of the model's text against the language's",
    "ppl_oracle": "PPL_oracle of the model's samples",
    "reverse_ce": "reverse cross-entropy (precision)",
    "accuracy": "in-context accuracy after continual fine-tuning",
}
# Measured too, with no paper direction this report checks: compared in neutral words.
ALSO_MEASURED = ("forward_ce", "ppl_test")
BRANCH_POINTS = {"dot": "After a sentence end (\".\")", "noun": "After a noun"}
BRANCH_NAMES = {"det": "determiner (the text goes on)", "it": "\"it is about …\"", "end": "end of text",
                "verb": "verb", "prep": "preposition", "dot": "\".\""}
OPTIMA = (("emo1_optimum", "EMO-1 optimum"), ("emo2_optimum", "EMO-2 optimum"))


def pooled(members: list[RunData], task: str, key: str) -> tuple[float, float | None, int] | None:
    """Mean, sample std (None for one run) and count of `key` over runs at their selected checkpoints."""
    vals = [v for v in (r.selected(task, key) for r in members) if v is not None]
    if not vals:
        return None
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else None), len(vals)


def _fmt(v: float, pct: bool) -> str:
    return f"{100 * v:.1f} %" if pct else f"{v:.4g}"


def _with_std(p: tuple[float, float | None, int], pct: bool) -> str:
    mean, std, _ = p
    if std is None:
        return _fmt(mean, pct)
    return _fmt(mean, pct) + (f" ± {100 * std:.1f} %" if pct else f" ± {std:.2g}")


def compare(runs: list[RunData], task: str, key: str, directed: bool = True) -> str | None:
    """One sentence: EMO against MLE on `key`, in the paper's direction or not, judged by the difference against
    twice its standard error: over seeds, and where the evaluator recorded `<key>_stderr` (accuracy on a finite
    set of rows, the same for every run) also over rows, unpaired (conservative)."""
    g = groups(runs)
    if BASE not in g or CANDIDATE not in g:
        return None
    base, cand = pooled(g[BASE], task, key), pooled(g[CANDIDATE], task, key)
    if base is None or cand is None:
        return None
    name, higher, pct = METRICS[key]
    diff = cand[0] - base[0]
    word = "higher" if diff > 0 else "lower" if diff < 0 else "equal"
    better = (diff > 0) == higher and diff != 0
    head = f"{name}: EMO {_with_std(cand, pct)}, MLE {_with_std(base, pct)} — EMO {word}"
    if base[1] is None or cand[1] is None:
        return head + ("" if not directed else ", the paper's direction" if better else ", not the paper's direction") + \
            "; one run per objective, so there is no spread to judge the difference by."
    var, over = cand[1] ** 2 / cand[2] + base[1] ** 2 / base[2], "seeds"
    rows = [pooled(g[n], task, key + "_stderr") for n in (BASE, CANDIDATE)]
    if all(r is not None for r in rows):
        var += sum(r[0] ** 2 for r in rows)
        over = "seeds and test rows"
    se = math.sqrt(var)
    scale = 100 if pct else 1
    size = f"difference {scale * diff:+.3g}{' points' if pct else ''}, standard error over {over} {scale * se:.2g}"
    if not directed:
        return f"{head} ({size}; {'more than' if abs(diff) > 2 * se else 'within'} twice its standard error)."
    if abs(diff) > 2 * se:
        verdict = "reproduces the paper's direction" if better else "the opposite of the paper's direction: not reproduced"
        return f"{head}: {verdict} ({size})."
    return f"{head}, within twice its standard error ({size}): neither reproduced nor contradicted here."


def _mauve_context(runs: list[RunData]) -> str:
    """What the MAUVE numbers are: prefixes, sampling runs, the reference-vs-language ceiling, where recorded."""
    parts = []
    for key, text in (("mauve_prefixes", "{:.0f} prefixes"), ("mauve_runs", "{:.0f} sampling runs (± run std in the tables)")):
        vals = {r.selected(ORACLE, key) for r in runs} - {None}
        if len(vals) == 1:
            parts.append(text.format(vals.pop()))
    ceiling = pooled(runs, ORACLE, "mauve_ceiling")
    out = f" MAUVE is measured over {', '.join(parts)}." if parts else ""
    if ceiling is not None:
        out += f" The language's own text against the reference scores {ceiling[0]:.3f} (the ceiling)."
    return out


def _accuracy_context(runs: list[RunData], task: str) -> str:
    g = groups(runs)
    bayes = pooled(runs, task, "bayes_accuracy")
    if bayes is None:
        return ""
    gaps = []
    for name in (BASE, CANDIDATE):
        acc = pooled(g.get(name, []), task, "accuracy")
        if acc is not None:
            gaps.append(f"{name} {100 * (bayes[0] - acc[0]):.1f} points below it")
    return f" The Bayes-optimal accuracy on the same rows is {100 * bayes[0]:.1f} %" + \
        (f" ({', '.join(gaps)})." if gaps else ".")


def accuracy_tasks(runs: list[RunData]) -> list[str]:
    return sorted({t for r in runs for t, by_step in r.metrics.items() for m in by_step.values() if "bayes_accuracy" in m})


def verdict_items(runs: list[RunData]) -> list[str]:
    """One sentence per paper direction the runs measured (EMO and MLE both present)."""
    items = []
    for key in PAPER_DIRECTIONS:
        tasks = [ORACLE] if key != "accuracy" else accuracy_tasks(runs)
        for task in tasks:
            line = compare(runs, task, key)
            if line is None:
                continue
            if key == "mauve":
                line += _mauve_context(runs)
            if key == "accuracy":
                line += _accuracy_context(runs, task)
            items.append(line)
    return items


def also_measured(runs: list[RunData]) -> list[str]:
    return [line for key in ALSO_MEASURED if (line := compare(runs, ORACLE, key, directed=False)) is not None]


def calibration_rows(runs: list[RunData]) -> dict[str, list[tuple[str, dict[str, float]]]]:
    """point -> [(branch, {"oracle", each objective group, "emo1_optimum", "emo2_optimum": mean mass})]."""
    keys = sorted({k for r in runs for m in r.metrics.get(ORACLE, {}).values() for k in m if k.startswith("calib/")})
    out: dict[str, list[tuple[str, dict[str, float]]]] = {}
    for key in keys:
        parts = key.split("/")
        if len(parts) != 3 or parts[2] == "contexts":
            continue
        point, branch = parts[1], parts[2]
        row: dict[str, float] = {}
        for source in ("oracle", *(o for o, _ in OPTIMA)):
            p = pooled(runs, ORACLE, f"{key}/{source}")
            if p is not None:
                row[source] = p[0]
        for name, members in groups(runs).items():
            p = pooled(members, ORACLE, key)
            if p is not None:
                row[name] = p[0]
        out.setdefault(point, []).append((branch, row))
    return out


def _tv(a: dict[str, float], b: dict[str, float]) -> float:
    return 0.5 * sum(abs(a[k] - b[k]) for k in a)


def calibration_paragraph(rows: dict[str, list[tuple[str, dict[str, float]]]], runs: list[RunData]) -> str:
    """The plain-words reading of the table at the sentence end (or the first branch point measured)."""
    point = "dot" if "dot" in rows else next(iter(rows), None)
    if point is None:
        return ""
    branches = rows[point]
    if not all("oracle" in r for _, r in branches):
        return ""

    def masses(source: str) -> dict[str, float] | None:
        return {b: r[source] for b, r in branches} if all(source in r for _, r in branches) else None

    def says(m: dict[str, float]) -> str:
        return ", ".join(f"{BRANCH_NAMES.get(b, b)} {100 * v:.1f} %" for b, v in m.items())

    oracle = masses("oracle")
    text = [f"{BRANCH_POINTS.get(point, point)} the language's next word is: {says(oracle)}."]
    for name in (BASE, CANDIDATE):
        m = masses(name)
        if m is not None:
            text.append(f"{name} puts {says(m)} (total variation from the language {_tv(m, oracle):.3f}).")
    optimum = masses("emo1_optimum")
    if optimum is not None:
        text.append(f"EMO-1's population optimum — the minimiser of its expected loss under the language, computed "
                    f"from the cost embedding and the language alone, with no model — is {says(optimum)}.")
        fewer = [BRANCH_NAMES.get(b, b) for b in oracle if optimum[b] < oracle[b] - 0.01]
        more = [BRANCH_NAMES.get(b, b) for b in oracle if optimum[b] > oracle[b] + 0.01]
        if fewer and more:
            text.append(f"Averaged over the data DEMD is linear in q, so on its own it is minimised by a point mass on "
                        f"the token of lowest expected cost; mixed with MLE by EMO's weight it still moves mass from "
                        f"{' and '.join(fewer)} to {' and '.join(more)} here.")
        emo = masses(CANDIDATE)
        if emo is not None:
            d_opt, d_lang = _tv(emo, optimum), _tv(emo, oracle)
            rel = "closer to that optimum" if d_opt < d_lang else "closer to the language than to that optimum"
            text.append(f"Trained EMO is {rel} (total variation {d_opt:.3f} from the optimum, {d_lang:.3f} from the "
                        f"language)" + (": the objective, not the optimiser, sets these masses." if d_opt < d_lang / 2
                                        else "."))
    g = groups(runs)
    ended = {n: pooled(g.get(n, []), ORACLE, "samples_ended") for n in (BASE, CANDIDATE)}
    if all(v is not None for v in ended.values()):
        text.append("Free samples that end within the sampling budget: " +
                    ", ".join(f"{n} {100 * v[0]:.0f} %" for n, v in ended.items()) + ".")
    return " ".join(text)


# ------------------------------------------------------------------------------------------- sections

def verdict_markdown(runs: list[RunData]) -> str:
    items = verdict_items(runs)
    if not items:
        return ""
    rows = calibration_rows(runs)
    why = calibration_paragraph(rows, runs)
    md = ("EMO against MLE on the directions the paper reports, each run at its best checkpoint (lowest validation "
          "loss, the paper's selection); a difference counts when it exceeds twice its standard error "
          "(over seeds, and over test rows where the evaluator recorded one).\n\n"
          + "\n".join(f"- {i}" for i in items) + "\n")
    more = also_measured(runs)
    if more:
        md += "\nAlso measured (no direction of the paper's checked here):\n\n" + "\n".join(f"- {i}" for i in more) + "\n"
    if why:
        md += "\nThe mechanism, measured (calibration table below): " + why + link_to_mauve(runs, rows, items) + "\n"
    return md


def link_to_mauve(runs: list[RunData], rows, items: list[str]) -> str:
    """One more sentence where the numbers support it: MAUVE not reproduced, and EMO ends texts (at a sentence
    end) less than half as often as the language does."""
    mauve = next((i for i in items if i.startswith("MAUVE:")), "")
    end = dict(rows.get("dot", [])).get("end", {})
    if "not reproduced" not in mauve or not {"oracle", CANDIDATE} <= set(end) or end[CANDIDATE] >= end["oracle"] / 2:
        return ""
    return (f" So EMO ends a text after a sentence {end['oracle'] / max(end[CANDIDATE], 1e-12):.1f} times less often "
            "than the language: its samples are shaped differently from the language's text, which is what MAUVE "
            "compares.")


def icl_table(runs: list[RunData]) -> str:
    lines = []
    for task in accuracy_tasks(runs):
        bayes = pooled(runs, task, "bayes_accuracy")
        n_rows = {r.selected(task, "accuracy_stderr") is not None for r in runs}
        lines += [f"**{task}**: accuracy against the Bayes-optimal accuracy on the same rows (exact posterior), each "
                  "run at its best checkpoint; mean ± std over seeds, [the evaluator's standard error].", "",
                  "| Objective | seeds | accuracy (%) | Bayes-optimal (%) | gap (points) |", "|:---|:---:|:---:|:---:|:---:|"]
        for name, members in groups(runs).items():
            acc = pooled(members, task, "accuracy")
            if acc is None or bayes is None:
                continue
            se = pooled(members, task, "accuracy_stderr")
            b = pooled(members, task, "bayes_accuracy")
            bse = pooled(members, task, "bayes_accuracy_stderr")
            cell = _with_std(acc, True).replace(" %", "") + (f" [{100 * se[0]:.1f}]" if se and n_rows else "")
            bcell = f"{100 * b[0]:.1f}" + (f" [{100 * bse[0]:.1f}]" if bse else "")
            lines.append(f"| {name} | {acc[2]} | {cell} | {bcell} | {100 * (b[0] - acc[0]):.1f} |")
        lines.append("")
    return "\n".join(lines)


def calibration_table(runs: list[RunData]) -> str:
    rows = calibration_rows(runs)
    if not rows:
        return ""
    names = [n for n in groups(runs)]
    head = ["Context", "next", "language"] + names + [label for _, label in OPTIMA]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":---", ":---"] + [":---:"] * (len(head) - 2)) + "|"]
    for point, branches in rows.items():
        for branch, row in branches:
            cells = [row.get(k) for k in ["oracle", *names, *(o for o, _ in OPTIMA)]]
            lines.append(f"| {BRANCH_POINTS.get(point, point)} | {BRANCH_NAMES.get(branch, branch)} | " +
                         " | ".join("–" if v is None else f"{100 * v:.1f}" for v in cells) + " |")
    contexts = {r.selected(ORACLE, f"calib/{p}/contexts") for r in runs for p in rows} - {None}
    lines += ["", "Next-token mass (%) per branch, averaged over the branch point's positions in the validation text"
              + (f" (up to {max(contexts):.0f} per point)" if contexts else "") + ": the language's exact distribution, "
              "each objective's models (mean over seeds, best checkpoint) and the population optimum of EMO-1 / EMO-2 "
              "at the same positions (no model: the cost embedding EMO trains with and the language's distribution)."]
    return "\n".join(lines) + "\n"


def _md_block_html(md: str) -> str:
    """Paragraphs, bullet lists and tables of a small Markdown block, as HTML."""
    out, table = [], []
    for block in md.split("\n\n"):
        lines = block.strip().splitlines()
        if not lines:
            continue
        if lines[0].startswith("|"):
            table = lines
            out.append(md_to_html_table("\n".join(table)))
        elif all(line.startswith("- ") for line in lines):
            out.append("<ul>" + "".join(f"<li>{html.escape(line[2:])}</li>" for line in lines) + "</ul>")
        else:
            out.append(f"<p>{html.escape(' '.join(lines))}</p>")
    return "\n".join(out)


def verdict_section(ctx):
    md = verdict_markdown(ctx.runs)
    return Section("What reproduced here", _md_block_html(md), md) if md else None


def icl_section(ctx):
    md = icl_table(ctx.runs)
    if not md:
        return None
    plots = [Plot(f"accuracy_vs_bayes_{t}", plot_ceiling(ctx.runs, t), f"{t}: accuracy per objective (mean ± std over "
                  "seeds, each run at its best checkpoint) against the Bayes-optimal accuracy on the same rows")
             for t in accuracy_tasks(ctx.runs)]
    return Section("In-context accuracy against its Bayes ceiling", _md_block_html(md), md, plots)


def calibration_section(ctx):
    md = calibration_table(ctx.runs)
    if not md:
        return None
    why = calibration_paragraph(calibration_rows(ctx.runs), ctx.runs)
    md += ("\n" + why + "\n") if why else ""
    return Section("Calibration at the language's branch points", _md_block_html(md), md)
