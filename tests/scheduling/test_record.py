"""One way to record a result: `emotune eval` by hand lands in the store `emotune results` and `emotune report`
read, like the scheduler's jobs (emotune.scheduling.record); where there is nothing, one line says what to run."""

from __future__ import annotations

import json
import os

import pytest
from eval_builders import TEST_TEXTS, TRAIN_TEXTS, build_llama, build_tokenizer, rows, write_jsonl  # noqa: F401
from scheduling_helpers import write_model_checkpoint

from emotune.cli import main as emotune
from emotune.scheduling.record import JOB_ENV
from emotune.scheduling.store import Store, default_store_path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("record")
    tok = build_tokenizer(d / "model")
    model = build_llama(d / "model", len(tok), seed=2)
    for name in ("sst2", "cr"):
        write_jsonl(d / "data" / name / "train.jsonl", rows(TRAIN_TEXTS, 2))
        write_jsonl(d / "data" / name / "test.jsonl", rows(TEST_TEXTS, 2))
    run = d / "runs" / "emo"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("objective: {name: emo}\n")
    write_model_checkpoint(run, 7, model, tok, tokens=7000)
    return d


def evaluate(setup, model, out, tasks="sst2,cr", *extra):
    return emotune(["eval", "--model", str(model), "--tasks", tasks, "--out", str(out), f"data_dir={setup / 'data'}",
                    f"cache_dir={setup / 'cache'}", "progress=false", *extra])


def accuracies(out) -> dict[str, float]:
    summary = json.loads((out / "summary.json").read_text())
    return {t: r["metrics"]["accuracy"] for t, r in summary["tasks"].items()}


def test_a_hand_evaluation_shows_in_results_and_report(setup, tmp_path, capsys):
    out = tmp_path / "by-hand"
    assert evaluate(setup, setup / "model", out) == 0
    assert f"recorded in {default_store_path(out)}" in capsys.readouterr().out
    acc = accuracies(out)
    assert emotune(["results", str(out)]) == 0
    table = capsys.readouterr().out
    for task, value in acc.items():
        assert task in table and f"{100 * value:.2f}" in table, table
    assert emotune(["results", str(out), "--json"]) == 0
    got = {r["task"]: r for r in json.loads(capsys.readouterr().out)}
    assert {t: r["metrics"]["accuracy"] for t, r in got.items()} == acc
    assert all(r["status"] == "finished" and r["output_dir"] == str(out.resolve()) for r in got.values())
    assert emotune(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "results.md").read_text()
    assert f"| {100 * acc['sst2']:.2f} |" in md.split("## Results (paper layout)")[1], md


def test_a_checkpoint_evaluated_by_hand_joins_its_runs_results(setup, tmp_path, capsys):
    run = setup / "runs" / "emo"
    out = tmp_path / "elsewhere"
    assert evaluate(setup, run / "checkpoint-7", out, "sst2") == 0
    acc = accuracies(out)["sst2"]
    capsys.readouterr()
    with Store(default_store_path(run), create=False) as store:
        (row,) = store.rows(str(run.resolve()))
    assert (row.step, row.tokens_seen, row.objective, row.task, row.metrics["accuracy"]) == (7, 7000, "emo", "sst2", acc)
    assert emotune(["results", str(run)]) == 0
    assert f"{100 * acc:.2f}" in capsys.readouterr().out
    assert emotune(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    assert "| EMO |" in (tmp_path / "report" / "results.md").read_text()
    # the evaluation's own folder points at the run
    assert emotune(["results", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"emotune results {run.resolve()}" in err
    # evaluated again with the same settings: the same row, not a second one
    assert evaluate(setup, run / "checkpoint-7", out, "sst2", "resume=false") == 0
    with Store(default_store_path(run), create=False) as store:
        assert len(store.rows(str(run.resolve()))) == 1


def test_a_scheduled_job_is_recorded_by_the_scheduler_only(setup, tmp_path, monkeypatch):
    monkeypatch.setenv(JOB_ENV, "12")
    out = tmp_path / "job"
    assert evaluate(setup, setup / "model", out, "sst2") == 0
    assert (out / "summary.json").is_file() and not default_store_path(out).exists()


@pytest.mark.parametrize("case", ["empty folder", "empty store", "suite filter"])
def test_nothing_to_show_is_one_line_saying_what_to_run(tmp_path, capsys, case):
    run = tmp_path / "run"
    run.mkdir()
    extra = []
    if case != "empty folder":
        Store(default_store_path(run)).close()
    if case == "suite filter":
        with Store(default_store_path(run)) as store:
            store.enqueue(str(run.resolve()), 1, "fp", "icl", "v1", ["sst2"], str(run / "checkpoint-1"))
        extra = ["--suite", "mmlu"]
    says = ["its suites: icl"] if extra else ["emotune eval --model", "emotune watch"]  # what to run, or to ask
    assert emotune(["results", str(run), *extra]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and all(s in err for s in says), err
    assert emotune(["report", str(run), *extra, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and all(s in err for s in says), err


def test_a_summary_made_before_recording_says_how_to_record_it(setup, tmp_path, capsys, monkeypatch):
    out = tmp_path / "old"
    monkeypatch.setenv(JOB_ENV, "1")  # not recorded, as an evaluation made before emotune recorded every one
    assert evaluate(setup, setup / "model", out, "sst2") == 0
    monkeypatch.delenv(JOB_ENV)
    capsys.readouterr()
    assert emotune(["results", str(out)]) == 2
    assert f"--out {out}` again" in capsys.readouterr().err
    assert evaluate(setup, setup / "model", out, "sst2") == 0  # reused, not redone, and now recorded
    assert "already in" in capsys.readouterr().out
    assert emotune(["results", str(out)]) == 0
    assert os.path.isfile(default_store_path(out))


def test_an_unusable_store_is_refused_before_any_work(setup, tmp_path, capsys):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database at all" * 100)
    out = tmp_path / "o"
    assert evaluate(setup, setup / "model", out, "sst2", "--store", str(bad)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(bad) in err and "result store" in err, err
    assert not (out / "summary.json").exists() and bad.read_bytes() == b"not a database at all" * 100
