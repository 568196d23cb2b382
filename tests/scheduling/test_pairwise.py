"""Scheduled pairwise judging runs each (run A, run B, step, judge) exactly once: two schedulers racing on
the same stores launch one judge between them; a judge job killed mid-run is retried after its lease
expires and recorded once. Real processes: the job and `emotune judge` with a tiny constant judge."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from instruct_builders import constant_judge, instruct_rows, outputs_with_marker
from train_builders import REPO, make_tokenizer

from emotune.atomic import write_json
from emotune.scheduling.pairwise import Pair, PairStore, PairwiseScheduler, pair_output_dir
from emotune.scheduling.store import Store, default_store_path

VERSION = "suite-v1"


def fake_run(root: Path, name: str, steps: list[int], marked: bool) -> Path:
    """A run directory whose store holds finished alpaca_eval rows (their predictions: outputs files)."""
    run = (root / name).resolve()
    rows = instruct_rows(3)
    with Store(default_store_path(run)) as store:
        for step in steps:
            out = run / "eval" / f"step-{step}" / "alpaca_eval.outputs.json"
            out.parent.mkdir(parents=True)
            write_json(out, outputs_with_marker(rows, f"{name}-{step}", marked, seed=step))
            store.enqueue(str(run), step, f"fp{step}", "instruct", VERSION, ["alpaca_eval"], str(run / f"ckpt-{step}"))
        for row, token in store.claim("test", 60.0, str(run), limit=len(steps)):
            out = run / "eval" / f"step-{row.step}" / "alpaca_eval.outputs.json"
            store.finish(row.id, token, {"mean_new_tokens": 3.0}, 3, str(out), str(out.parent), 0.1)
    return run


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairwise")
    tok = make_tokenizer(root / "tok")
    constant_judge(root / "judge", tok, " A")
    return {"root": root, "a": fake_run(root, "emo", [3, 6], True), "b": fake_run(root, "mle", [3], False),
            "judge": str(root / "judge")}


def pair(world, *args: str) -> Pair:
    return Pair("emo-vs-mle", str(world["a"]), str(world["b"]), "alpaca_eval", world["judge"], "plain", VERSION,
                tuple(args))


RACER = """
import sys, time
from emotune.scheduling.pairwise import Pair, PairwiseScheduler
p = Pair(*sys.argv[1:8], tuple(sys.argv[8:]))
s = PairwiseScheduler([p], ttl=30.0)
deadline = time.time() + 240
while time.time() < deadline:
    s.tick()
    if s.rows() and s.finished():
        break
    time.sleep(0.2)
"""


def test_two_schedulers_racing_judge_each_step_once(world):
    p = pair(world, "bootstrap=50")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    argv = [p.name, p.run_a, p.run_b, p.task, p.judge, p.format, p.suite_version, *p.judge_args]
    racers = [subprocess.Popen([sys.executable, "-c", RACER, *argv], env=env, cwd=REPO) for _ in range(2)]
    assert [r.wait(timeout=300) for r in racers] == [0, 0]
    rows = [r for r in PairwiseScheduler([p]).rows()]
    assert [(r.step, r.status, r.attempts) for r in rows] == [(3, "finished", 1)]  # step 6: only run A has it
    assert len((pair_output_dir(rows[0]) / "attempts.jsonl").read_text().splitlines()) == 1  # judged once
    res = rows[0].result
    assert (res["win"], res["tie"], res["lose"], res["n"]) == (0, 3, 0, 3)  # the constant judge: all ties
    assert json.loads((pair_output_dir(rows[0]) / "pairwise.json").read_text())["tie"] == 3


def test_a_killed_judge_job_is_retried_and_recorded_once(world):
    p = pair(world, "bootstrap=60")  # another version: its own row
    sched = PairwiseScheduler([p], ttl=4.0)
    assert sched.tick() == 1
    (row,) = sched.rows()
    log = pair_output_dir(row) / "attempts.jsonl"
    deadline = time.time() + 60
    while not log.exists() and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(sched.procs[0].pid, signal.SIGKILL)  # the job and its judge, mid-run
    sched.procs[0].wait()
    assert sched.tick() == 0  # its lease is still alive: nobody else may take it yet
    deadline = time.time() + 240
    while time.time() < deadline and not (sched.finished() and sched.rows()[0].status == "finished"):
        sched.tick()
        time.sleep(0.3)
    (row,) = sched.rows()
    assert (row.status, row.attempts) == ("finished", 2) and "expired" in str(row.error or "expired")
    assert len(log.read_text().splitlines()) == 2
    assert row.result["n"] == 3


def test_the_pairwise_table_lives_beside_the_results(world):
    store = PairStore(default_store_path(world["a"]))
    try:
        assert {r.version for r in store.rows()} >= {pair(world, "bootstrap=50").version}
    finally:
        store.close()
    with Store(default_store_path(world["a"]), create=False) as s:  # the result rows are untouched
        assert sorted(r.step for r in s.rows()) == [3, 6]


def test_the_report_shows_a_bar_per_judge_and_pair(world, tmp_path):
    from emotune.report.build import make_report

    written = make_report([str(world["a"]), str(world["b"])], str(tmp_path / "report"))
    md = written["markdown"].read_text()
    assert "## Pairwise judgments (A vs B)" in md
    # both judged versions of emo-vs-mle at step 3 (the constant judge: three ties each)
    table = [ln for ln in md.splitlines() if ln.startswith("| emo-vs-mle")]
    assert table and all("| 3 | 0 | 3 | 0 | 0 |" in ln for ln in table)
    page = written["html"].read_text()
    assert "id='pairwise'" in page and page.index("Pairwise judgments") < page.index("</body>")
    assert written["pairwise"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pairs_from_config_checks_names_tasks_and_judges(world, tmp_path):
    from emotune.errors import EmotuneError
    from emotune.scheduling.pairwise import PairwisePart, pairs_from_config

    runs = {"emo": world["a"], "mle": world["b"]}
    part = PairwisePart(a="emo", b="mle", judge=world["judge"], format="pandalm")
    (p,) = pairs_from_config([part], runs, VERSION, ["alpaca_eval"], "pipe.yaml")
    assert (p.name, p.run_a, p.run_b, p.format) == ("emo-vs-mle", str(world["a"]), str(world["b"]), "pandalm")
    assert p.version != pair(world).version  # another format: judged again
    for bad, words in ((dict(b="emo"), "same run"), (dict(b="gpt"), "pairwise.0.b"),
                       (dict(task="sst2"), "pairwise.0.task"), (dict(judge=str(tmp_path / "x")), "pairwise.0.judge")):
        with pytest.raises(EmotuneError, match=words):
            pairs_from_config([part.model_copy(update=bad)], runs, VERSION, ["alpaca_eval"], "pipe.yaml")


def test_bad_input_fails_the_pair_at_once(world, tmp_path):
    """Different instruction sets on the two sides: `emotune judge` exits 2, the row fails without retries."""
    from emotune.scheduling.pairwise import run_pair_job

    a = tmp_path / "a.json"
    write_json(a, outputs_with_marker(instruct_rows(2), "a", True))
    b = tmp_path / "b.json"
    write_json(b, outputs_with_marker(instruct_rows(3), "b", False))
    p = pair(world, "bootstrap=70")
    store = PairStore(default_store_path(world["a"]))
    try:
        store.enqueue(p, 99, str(a), str(b))
        (row, token), = store.claim("test", 60.0, [p.version])
        assert run_pair_job(str(store.path), row.id, token, 60.0, 3, p.command, []) == 1
        row = store.get(row.id)
        assert (row.status, row.attempts) == ("failed", 1) and "different instruction sets" in row.error
    finally:
        store.close()


def rule_command(tag: str) -> str:
    """A judge command running the rule judge (tests/instruct_builders.py) and noting `tag`."""
    return f"{{python}} {REPO / 'tests' / 'instruct_builders.py'} {{a}} {{b}} {{judge}} {{format}} {{out}} {tag}"


def test_pairs_differing_only_in_command_and_devices_each_run_their_own(world):
    """Two pairs alike but for judge_command and devices are two judgments (the command is part of the
    version), and each row runs its own pair's command on its own GPUs; the rule judge's verdicts depend on
    the pair: run A's responses hold the marker word, B's do not, so A wins every pair."""
    base = pair(world)
    one = replace(base, command=rule_command("one"), devices="3")
    two = replace(base, command=rule_command("two"), devices="5")
    assert one.version != two.version
    sched = PairwiseScheduler([one, two], ttl=30.0, jobs=2)
    deadline = time.time() + 240
    while time.time() < deadline and not (sched.rows() and sched.finished()):
        sched.tick()
        time.sleep(0.2)
    rows = {r.version: r for r in sched.rows()}
    assert set(rows) == {one.version, two.version}
    for p, tag in ((one, "one"), (two, "two")):
        row = rows[p.version]
        assert row.status == "finished", row.error
        ran = json.loads((pair_output_dir(row) / "pairwise.json").read_text())["ran"]
        assert (ran["tag"], ran["devices"]) == (tag, p.devices)
        assert (row.result["win"], row.result["tie"], row.result["lose"]) == (3, 0, 0)
        assert [rec["verdict_ab"] for rec in json.loads((pair_output_dir(row) / "pairwise.json").read_text())
                ["pairs"]] == ["first"] * 3


def test_two_judges_of_one_pair_name_write_their_own_folders(world, tmp_path):
    """The default name is A-vs-B whatever the judge: two formats of one pair must not share a folder (each
    job deletes and reads its folder's pairwise.json)."""
    store = PairStore(default_store_path(world["a"]))
    try:
        plain, pandalm = pair(world, "bootstrap=80"), replace(pair(world, "bootstrap=80"), format="pandalm")
        for p in (plain, pandalm):
            store.enqueue(p, 77, "a.json", "b.json")
        rows = [r for r in store.rows() if r.step == 77]
        assert len(rows) == 2 and pair_output_dir(rows[0]) != pair_output_dir(rows[1])
    finally:
        store.close()


def test_the_same_pair_twice_is_refused(world):
    from emotune.errors import EmotuneError
    from emotune.scheduling.pairwise import PairwisePart, pairs_from_config

    runs = {"emo": world["a"], "mle": world["b"]}
    part = PairwisePart(a="emo", b="mle", judge=world["judge"], devices="1")
    with pytest.raises(EmotuneError, match="pairwise.1 judges the same as pairwise.0"):
        pairs_from_config([part, part.model_copy(update={"devices": "2", "name": "x"})], runs, VERSION,
                          ["alpaca_eval"], "pipe.yaml")
