"""Where a task's `shards` come from (suite entry, suite file, task file), and that they change no suite
version; the rest of sharding runs in tests/e2e/test_sharded_scheduling.py and tests/eval/test_eval_shards.py."""

from __future__ import annotations

import json


def test_where_shards_come_from_and_that_they_change_no_suite_version(tmp_path):
    """The most specific wins: the suite entry, then the suite file's `shards`, then the task file's, else 1.
    Sharding changes no result, so it is not part of the suite version (nothing is re-evaluated)."""
    from emotune.scheduling.scheduler import resolve_suite

    task = {"name": "a", "kind": "icl", "dataset": {"data_files": {"train": "x.jsonl", "test": "y.jsonl"}},
            "input_columns": ["text"], "templates": {0: "<X> no", 1: "<X> yes"}}
    (tmp_path / "a.yaml").write_text(json.dumps({**task, "shards": 4}))
    (tmp_path / "b.yaml").write_text(json.dumps({**task, "name": "b"}))
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "a.yaml").write_text(json.dumps(task))
    (tmp_path / "plain" / "b.yaml").write_text(json.dumps({**task, "name": "b"}))
    suites = {"files": ["a.yaml", "b.yaml"], "wide": {"tasks": ["a.yaml", "b.yaml"], "shards": 2},
              "entry": {"tasks": [{"task": "a.yaml", "shards": 3}, "b.yaml"], "shards": 2},
              "plain/s": ["a.yaml", "b.yaml"]}
    got = {}
    for name, entries in suites.items():
        (tmp_path / f"{name}.yaml").write_text(json.dumps(entries))
        got[name] = resolve_suite(str(tmp_path / f"{name}.yaml"))
    assert {k: s.shards for k, s in got.items()} == {"files": (4, 1), "wide": (2, 2), "entry": (3, 2),
                                                       "plain/s": (1, 1)}
    assert len({s.version for s in got.values()}) == 1
    assert resolve_suite("mmlu").shards == (1,)  # the shipped suites: as their task files say
