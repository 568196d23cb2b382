"""`emotune report`: PNG plots, the paper-layout Markdown table, and an HTML page checked in headless Chromium."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess

import pytest
from scheduling_helpers import PY, env
from system_programs import require

from emotune.scheduling.store import Store, default_store_path

TASKS = ["sst2", "trec", "mmlu"]
OBJECTIVES = {"mle": 0.0, "tailr": 0.01, "mixce": 0.02, "emo": 0.05}


def make_run(root, objective, bonus, steps=(100, 200, 300)):
    run = root / f"run-{objective}"
    run.mkdir(parents=True)
    store = Store(default_store_path(run))
    for s in steps:
        store.enqueue(str(run), s, f"fp{s}", "paper", "v1", TASKS, str(run / f"checkpoint-{s}"), s * 4096, objective)
    while claimed := store.claim("t", ttl=60, run=str(run), limit=100):
        for row, token in claimed:
            acc = 0.5 + bonus + 0.0005 * row.step + 0.01 * TASKS.index(row.task)
            store.finish(row.id, token, {"accuracy": acc}, 100, None, None, 1.0)
    # one failed job shows up in the page's problem list
    store.enqueue(str(run), 400, "fp400", "paper", "v1", ["sst2"], str(run / "checkpoint-400"), 400 * 4096, objective)
    (row, token), = store.claim("t", ttl=60, run=str(run))
    store.fail(row.id, token, "evaluator exited with status 1", max_attempts=1)
    with open(run / "train_log.jsonl", "w") as f:
        for step in range(1, 301, 10):
            scale = 1 - 4 * bonus  # distinct curves per run
            rec = {"step": step, "loss": 3 * scale / math.sqrt(step), "ce": 3.1 * scale / math.sqrt(step),
                   "lr": 1e-4 * (1 - step / 300),
                   "tokens_seen": step * 4096}
            if objective == "emo":
                rec.update(demd=0.5 / math.sqrt(step), weight=0.9)
            f.write(json.dumps(rec) + "\n")
            if step % 100 == 1:
                f.write(json.dumps({"step": step, "eval_ce": 3.2 / math.sqrt(step), "eval_ppl": 20.0}) + "\n")
        f.write('{"step": 301, "loss": 0.1')  # torn last line of a log being written
    return run


@pytest.fixture
def runs(tmp_path):
    return [make_run(tmp_path, o, b) for o, b in OBJECTIVES.items()]


def test_report_files_and_paper_table(tmp_path, runs):
    out = tmp_path / "report"
    res = subprocess.run([PY, "-m", "emotune.cli", "report", *map(str, runs), "--out", str(out)],
                         env=env(), capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    for name in ("metrics_vs_step", "metrics_vs_tokens", "final_by_task", "training"):
        data = (out / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    md = (out / "results.md").read_text()
    assert md.index("## Headline") < md.index("## Results (paper layout)")
    lines = md.split("## Results (paper layout)\n\n")[1].splitlines()
    assert lines[0] == "| Objective | SST-2 | TREC | MMLU | Avg. |"
    assert [l.split("|")[1].strip() for l in lines[2:6]] == ["MLE", "TaiLr", "MixCE", "EMO"]
    # EMO at step 300: 0.5 + 0.05 + 0.15 + 0.01 * task index
    assert lines[5] == "| EMO | **70.00** | **71.00** | **72.00** | **71.00** |"
    assert lines[2] == "| MLE | 65.00 | 66.00 | 67.00 | 66.00 |"
    assert "EMO: step 300" in md
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "src='http" not in page and "<link" not in page
    assert "evaluator exited with status 1" in page


def test_report_bad_input(tmp_path):
    res = subprocess.run([PY, "-m", "emotune.cli", "report", str(tmp_path), "--out", str(tmp_path / "o")],
                         env=env(), capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "no result store" in res.stderr and "emotune eval --model" in res.stderr and "emotune watch" in res.stderr


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_report_renders_in_headless_chromium(tmp_path, runs):
    require([] if CHROMIUM else ["chromium"], "the report's browser test")
    from emotune.report.build import make_report

    out = tmp_path / "report"
    page = make_report([str(r) for r in runs], str(out))["html"]
    url = page.resolve().as_uri()
    base = [CHROMIUM, *CHROME_FLAGS, "--virtual-time-budget=10000"]
    dom = subprocess.run(base + [f"--user-data-dir={tmp_path / 'profile1'}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    imgs = re.findall(r"<img [^>]*>", dom.stdout)
    assert len(imgs) == page.read_text().count("<img ") == 4  # metrics vs step / tokens, final by task, training
    for img in imgs:  # the page's own check ran in the browser: every plot decoded with a real size
        assert 'data-rendered="yes"' in img, img[:200]
    assert 'data-plots-rendered="4/4"' in dom.stdout
    shot = tmp_path / "screenshot.png"
    res = subprocess.run(base + [f"--user-data-dir={tmp_path / 'profile2'}", f"--screenshot={shot}",
                                 "--window-size=1300,4200", "--hide-scrollbars", url],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    import matplotlib.image as mpimg

    pixels = mpimg.imread(str(shot))[..., :3]
    assert pixels.shape[:2] == (4200, 1300)
    # plots are coloured lines and bars on white: plenty of non-grey pixels, not a blank page
    colourful = (pixels.max(-1) - pixels.min(-1)) > 0.2
    assert colourful.mean() > 0.005, colourful.mean()
    keep = __import__("os").environ.get("EMOTUNE_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


def test_best_checkpoint_marked_in_report_and_results(tmp_path, capsys):
    from emotune.atomic import write_json
    from emotune.cli import main as cli_main
    from emotune.report.build import make_report

    run = make_run(tmp_path, "emo", 0.05)
    # before the run recorded a best checkpoint: no mark, and --best says why in one line
    assert cli_main(["results", str(run)]) == 0
    assert "*" not in capsys.readouterr().out
    assert cli_main(["results", str(run), "--best"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "best.json" in err[0]
    write_json(run / "best.json", {"step": 200, "checkpoint": "checkpoint-200", "metric": "eval_ce", "value": 0.2262,
                                   "greater_is_better": False})  # the shape the training stage writes
    assert cli_main(["results", str(run)]) == 0
    table = capsys.readouterr().out
    assert "best checkpoint: step 200 (eval_ce 0.2262)" in table
    assert [l.split()[0] for l in table.splitlines() if l.strip()[:1].isdigit()] == ["100", "200*", "300", "400"]
    assert cli_main(["results", str(run), "--best", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["step"] for r in rows} == {200} and len(rows) == len(TASKS) and all(r["best"] for r in rows)
    out = make_report([str(run)], str(tmp_path / "report"))
    page, md = out["html"].read_text(), out["markdown"].read_text()
    assert "<tr class='best'><td>200 ★ best</td>" in page and page.count("★ best</td>") == 1
    assert "EMO: step 200 (eval_ce 0.2262)" in md
    (run / "best.json").write_text("{not json")
    assert cli_main(["results", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "best.json" in err[0] and "not valid JSON" in err[0]
