"""The report's pairwise section: a win / tie / lose bar per judge and pair (the layout of the EMO paper's
Figures 3-6) and both sides' average response lengths, included when the runs' stores hold finished
pairwise rows (emotune.scheduling.pairwise). Per (pair, judge, format) the latest judged step is shown.
"""

from __future__ import annotations

import html
import json
import sqlite3
from pathlib import Path

from emotune.scheduling.store import default_store_path

COLORS = {"win": "#4c9a5a", "tie": "#b8b8b8", "lose": "#c8553d"}


def read_pairs(run_dirs: list[str], store: str | None = None) -> list[dict]:
    """Finished pairwise rows of these runs' stores, latest step per (pair, judge, format); read-only."""
    paths = [Path(store)] if store else [default_store_path(d) for d in run_dirs]
    latest: dict[tuple, dict] = {}
    for path in dict.fromkeys(paths):
        if not path.is_file():
            continue
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            db.row_factory = sqlite3.Row
            if db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='pairwise'").fetchone() is None:
                continue
            for r in db.execute("SELECT * FROM pairwise WHERE status='finished' ORDER BY step, id"):
                row = dict(r)
                row["result"] = json.loads(row["result"])
                latest[(row["name"], row["judge"], row["format"])] = row  # later steps replace earlier ones
        finally:
            db.close()
    return list(latest.values())


def _label(row: dict) -> str:
    return f"{row['name']} · {Path(row['judge']).name} ({row['format']}) · step {row['step']}"


def plot_pairs(rows: list[dict]) -> bytes:
    """One horizontal stacked bar per (pair, judge): win / tie / lose counts of side A, lengths on the right."""
    import matplotlib.pyplot as plt

    from emotune.report.plots import _png

    fig, ax = plt.subplots(figsize=(9, 0.6 * len(rows) + 1.2))
    for y, row in enumerate(rows):
        res, left = row["result"], 0
        for key in ("win", "tie", "lose"):
            n = res[key]
            ax.barh(y, n, left=left, color=COLORS[key], label=key if y == 0 else None)
            if n:
                ax.text(left + n / 2, y, str(n), ha="center", va="center", fontsize=9)
            left += n
        ax.text(left * 1.01 + 0.5, y, f"len {res['a']['mean_length']:.0f} / {res['b']['mean_length']:.0f}",
                va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [_label(r) for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("instructions (A's win / tie / lose; both orders judged)")
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), fontsize=8, ncols=3, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def markdown(rows: list[dict]) -> str:
    lines = ["| Pair | Judge | Step | Win | Tie | Lose | Unparsed | Win rate (95% CI) | Len A | Len B |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        res = row["result"]
        lo, hi = res["win_rate_ci"]
        rate = f"{res['win_rate']:.1f} [{lo:.1f}, {hi:.1f}]" if res["n"] else "-"
        lines.append(f"| {row['name']} | {Path(row['judge']).name} ({row['format']}) | {row['step']} | {res['win']} | "
                     f"{res['tie']} | {res['lose']} | {res['unparsed']} | {rate} | {res['a']['mean_length']:.1f} | "
                     f"{res['b']['mean_length']:.1f} |")
    lines += ["", "Win rate counts a tie as half a win; a verdict that flips when the responses swap places is a "
              "tie; lengths in the judge's tokens.", ""]
    return "\n".join(lines)


def pairwise_parts(run_dirs: list[str], store: str | None = None) -> tuple[str, str, bytes] | None:
    """The section's Markdown, HTML table and bar plot, or None when no pair has been judged yet."""
    rows = read_pairs(run_dirs, store)
    if not rows:
        return None
    md = markdown(rows)
    return md, _html_table(md), plot_pairs(rows)


def _html_table(md: str) -> str:
    rows = [ln for ln in md.splitlines() if ln.startswith("|") and not ln.startswith("|---")]
    cells = [[html.escape(c.strip()) for c in ln.strip("|").split("|")] for ln in rows]
    head = "".join(f"<th>{c}</th>" for c in cells[0])
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in cells[1:])
    return f"<table><tr>{head}</tr>{body}</table>"
