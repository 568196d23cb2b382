"""The doc commands classified `e2e` in tests/test_docs.py, run as written, in doc order, in one folder
outside the source tree (offline, this interpreter's `emotune` first on PATH): the tiny training run of
docs/training.md and the offline instruction-following walk-through of docs/instruct-eval.md."""

from __future__ import annotations

import json
import time

import doc_blocks as db
import pytest
from test_docs import E2E, classify

# What each command must have left behind, beyond exit status 0.
LEFT_BEHIND = {
    "emotune train configs/train/tiny-cpu.yaml": ["runs/tiny-cpu/checkpoint-20/COMPLETE"],
    "emotune pipeline configs/pipelines/tiny-instruct.yaml": [
        "runs/tiny-instruct/emo/checkpoint-20/COMPLETE", "runs/tiny-instruct/mle/checkpoint-20/COMPLETE"],
}


@pytest.mark.e2e
def test_e2e_doc_commands_run_as_written(tmp_path, capsys):
    sandbox = db.make_sandbox(tmp_path / "user")
    commands = [c for c in db.all_commands() if (classify(c) or ("",))[0] == E2E]
    assert commands, "no doc command is classified e2e"
    timings = []
    for command in commands:
        start = time.monotonic()
        proc = db.run_bash(command.key, sandbox, db.sandbox_env(), timeout=900)
        timings.append((time.monotonic() - start, command))
        assert proc.returncode == 0, f"{command.where}: {command.key}\nexit {proc.returncode}: {proc.stderr[-3000:]}"
        for path in LEFT_BEHIND.get(command.key, []):
            assert (sandbox / path).exists(), f"{command.where}: {path} missing after {command.key}"
    judged = list((sandbox / "runs/tiny-instruct/judged").glob("alpaca_eval.pairwise-plain-*.json"))
    assert len(judged) == 1, "the judged comparison wrote no pairwise result"
    result = json.loads(judged[0].read_text())
    assert result["n"] == 8 and result["win"] + result["tie"] + result["lose"] + result["unparsed"] == 8, result
    with capsys.disabled():
        for seconds, command in timings:
            print(f"\n{seconds:6.1f} s  {command.where}  {command.key[:100]}", end="")
        print()
