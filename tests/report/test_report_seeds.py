"""`emotune report` over seeds: runs grouped by objective, mean ± std per objective (checked against
float64 statistics computed here), metric directions, stderr bars from `<metric>_stderr`, ★ on best.json."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest

from emotune.atomic import write_json
from emotune.scheduling.store import Store, default_store_path

STEPS = (20, 40, 60)


def metrics_of(objective: str, seed: int, step: int) -> dict[str, dict[str, float]]:
    """Distinct, known values per (objective, seed, step): EMO better on MAUVE and PPL_oracle."""
    gain = 0.1 if objective == "emo" else 0.0
    return {
        "synthetic_oracle": {"mauve": 0.5 + gain + 0.001 * step + 0.01 * seed, "ppl_oracle": 9.0 - 10 * gain - 0.01 * step + 0.1 * seed,
                             "ppl_test": 7.0 + 0.05 * seed, "samples_ended": 1.0, "mauve_samples": 64},
        "synthetic_topic": {"acc": 0.6 + gain / 2 + 0.002 * step - 0.01 * seed, "acc_stderr": 0.02 + 0.001 * seed},
    }


def make_seed_run(root, objective: str, seed: int, best_step: int | None = None):
    run = root / f"{objective}-seed{seed}"
    run.mkdir(parents=True)
    with Store(default_store_path(run)) as store:
        for step in STEPS:
            store.enqueue(str(run), step, f"fp{step}", "demo", "v1", ["synthetic_oracle", "synthetic_topic"],
                          str(run / f"checkpoint-{step}"), step * 1000 + seed, objective)
        while claimed := store.claim("t", ttl=60, run=str(run), limit=100):
            for row, token in claimed:
                store.finish(row.id, token, metrics_of(objective, seed, row.step)[row.task], 10, None, None, 1.0)
    with open(run / "train_log.jsonl", "w") as f:
        for step in range(10, 61, 10):
            f.write(json.dumps({"step": step, "loss": 3.0 / step + seed, "ce": 3.0 / step, "lr": 1e-3, "tokens_seen": step * 1000}) + "\n")
    if best_step is not None:
        write_json(run / "best.json", {"step": best_step, "checkpoint": f"checkpoint-{best_step}", "metric": "eval_ce",
                                       "value": 1.5, "greater_is_better": False})
    return run


@pytest.fixture
def seed_runs(tmp_path):
    return [make_seed_run(tmp_path, o, s, best_step=40 if s == 1 else None) for o in ("mle", "emo") for s in range(3)]


def test_headline_table_pools_seeds(tmp_path, seed_runs):
    from emotune.report.build import ReportOptions, make_report

    options = ReportOptions("demo", "MLE vs EMO", ["synthetic_oracle/mauve", "ppl_oracle", "acc"])
    md = make_report([str(r) for r in seed_runs], str(tmp_path / "report"), options=options)["markdown"].read_text()
    head, _, mle, emo = md.split("## Headline: objectives compared\n\n")[1].splitlines()[:4]
    assert head == "| Objective | seeds | MAUVE ↑ | PPL_oracle ↓ | accuracy (%) ↑ |"
    for row, obj in ((mle, "mle"), (emo, "emo")):
        cells = [c.strip().strip("*") for c in row.strip("|").split("|")]
        assert cells[:2] == [obj.upper(), "3"]
        for cell, (task, key, scale) in zip(cells[2:], [("synthetic_oracle", "mauve", 1), ("synthetic_oracle", "ppl_oracle", 1),
                                                        ("synthetic_topic", "acc", 100)]):
            # each run at its best checkpoint (seed 1: step 40, best.json), the others at their last
            vals = [scale * metrics_of(obj, s, 40 if s == 1 else STEPS[-1])[task][key] for s in range(3)]
            mean, std = cell.split(" ± ")
            assert float(mean) == pytest.approx(statistics.mean(vals), rel=1e-3)
            assert float(std) == pytest.approx(statistics.stdev(vals), rel=0.05)
    # best per column follows the metric's direction: EMO's higher MAUVE and lower PPL_oracle are bold
    assert emo.count("**") == 6 and "**" not in mle
    assert "MAUVE: 64 model samples against 64 reference samples per checkpoint" in md
    # the paper's accuracy table holds the accuracy task only: MAUVE is not averaged with accuracies
    assert "## Results (paper layout)\n\n| Objective | synthetic_topic | Avg. |" in md


def test_bad_headline_names_the_metric(tmp_path, seed_runs):
    from emotune.errors import EmotuneError
    from emotune.report.build import ReportOptions, make_report

    with pytest.raises(EmotuneError, match="samples_ended.*not a metric with a direction"):
        make_report([str(seed_runs[0])], str(tmp_path / "r"), options=ReportOptions(headline=["samples_ended"]))


def test_seed_lines_mean_band_best_and_stderr_bars(tmp_path, seed_runs):
    """What draw_groups puts on the axes: one thin line per seed, the bold mean, a ±std band, ★, stderr bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    from emotune.report.data import group_colors, label_runs, load_run
    from emotune.report.plots import draw_groups

    runs = [load_run(str(r), None, None) for r in seed_runs]
    label_runs(runs)
    colors = group_colors(runs)
    assert colors == {"MLE": "#1f77b4", "EMO": "#d62728"}
    fig, ax = plt.subplots()
    draw_groups(ax, [(r, r.series("synthetic_topic", "acc")) for r in runs], colors, "tokens", scale=100)
    bold = [l for l in ax.lines if l.get_linewidth() > 2]
    assert [l.get_label() for l in bold] == ["MLE (n=3)", "EMO (n=3)"]
    for line, obj in zip(bold, ("mle", "emo")):
        vals = np.array([[100 * metrics_of(obj, s, step)["synthetic_topic"]["acc"] for s in range(3)] for step in STEPS], np.float64)
        np.testing.assert_allclose(line.get_ydata(), vals.mean(1), rtol=1e-12)
        np.testing.assert_allclose(line.get_xdata(), [step * 1000 + 1 for step in STEPS])  # mean tokens over seeds
        assert line.get_color() == colors[obj.upper()]
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2
    top = bands[1].get_paths()[0].vertices[:, 1].max()  # EMO's band reaches mean + sample std at some step
    emo = np.array([[100 * metrics_of("emo", s, step)["synthetic_topic"]["acc"] for s in range(3)] for step in STEPS])
    assert top == pytest.approx((emo.mean(1) + emo.std(1, ddof=1)).max(), rel=1e-9)
    # the stderr bars: one errorbar per seed line, half-length = 100 * acc_stderr
    assert len(ax.containers) == 6
    seg = ax.containers[1].lines[2][0].get_segments()[0]  # MLE seed 1, first step
    assert seg[1][1] - seg[0][1] == pytest.approx(2 * 100 * 0.021)
    # ★ on each seed-1 run's best checkpoint (step 40), at that run's value
    stars = [l for l in ax.lines if l.get_marker() == "*"]
    assert len(stars) == 2
    assert stars[0].get_ydata()[0] == pytest.approx(100 * metrics_of("mle", 1, 40)["synthetic_topic"]["acc"])
    assert stars[0].get_xdata()[0] == 40 * 1000 + 1
    plt.close(fig)


def test_metric_labels_say_which_way_is_better():
    from emotune.report.data import metric_label

    assert metric_label("mauve") == "MAUVE ↑ higher is better"
    assert metric_label("ppl_oracle") == "PPL_oracle ↓ lower is better"
    assert metric_label("reverse_ce") == "reverse CE ↓ lower is better"
    assert metric_label("acc") == "accuracy (%) ↑ higher is better"
    assert metric_label("win_rate") == "win rate (%) ↑ higher is better"


def test_pooled_table_in_percent_with_stderr_beside_its_metric(tmp_path, seed_runs):
    """The pooled table shows an accuracy as the other tables do (50.00, not 0.5), and `acc_stderr` in the
    cell of `acc`, not as a metric of its own."""
    from emotune.report.build import make_report

    md = make_report([str(r) for r in seed_runs], str(tmp_path / "report"))["markdown"].read_text()
    pooled = md.split("## All metrics, runs of an objective pooled\n\n")[1].split("\n\n")[0].splitlines()
    head = [c.strip() for c in pooled[0].strip("|").split("|")]
    assert "synthetic_topic acc (%)" in head and not any("stderr" in h for h in head), head
    assert "synthetic_oracle mauve" in head and "synthetic_oracle ppl_test" in head  # not scores in percent: as they are
    col = head.index("synthetic_topic acc (%)")
    for row, obj in ((pooled[2], "mle"), (pooled[3], "emo")):
        cell = [c.strip() for c in row.strip("|").split("|")][col]
        accs = [100 * metrics_of(obj, s, STEPS[-1])["synthetic_topic"]["acc"] for s in range(3)]
        ses = [100 * metrics_of(obj, s, STEPS[-1])["synthetic_topic"]["acc_stderr"] for s in range(3)]
        mean, rest = cell.split(" ± ")
        assert mean == f"{statistics.mean(accs):.2f}"
        assert rest.endswith(f"(se {statistics.mean(ses):.2f})"), cell
