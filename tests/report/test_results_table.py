"""`emotune results`' table: each task's main metric with its standard error where the evaluator gave one."""

from __future__ import annotations

from emotune.report.results import main_metric, main_stderr, table
from emotune.scheduling.store import Store


def test_cells_show_the_stderr_of_the_main_metric(tmp_path):
    store = Store(tmp_path / "results.sqlite")
    store.enqueue("run", 10, "fp", "s", "v1", ["ours", "harness", "old", "ppl"], "ckpt", 1000)
    metrics = {"ours": {"accuracy": 0.875, "accuracy_stderr": 0.03125},
               "harness": {"acc": 0.5, "acc_stderr": 0.125, "acc_norm": 0.25, "acc_norm_stderr": 0.1},
               "old": {"accuracy": 0.75},  # stored before stderrs existed
               "ppl": {"ppl_test": 12.5, "ppl_test_stderr": 0.5}}
    for row, token in store.claim("t", ttl=60, limit=10):
        store.finish(row.id, token, metrics[row.task], 8, None, None, 1.0)
    rows = store.rows("run")
    by_task = {r.task: r for r in rows}
    assert main_metric(by_task["harness"].metrics) == 0.5 and main_stderr(by_task["harness"].metrics) == 0.125
    assert main_stderr(by_task["old"].metrics) is None
    line = table(rows).splitlines()[2]
    assert "87.50 ± 3.12" in line and "50.00 ± 12.50" in line and "12.5 ± 0.5" in line
    assert " 75.00 " in line + " " and "75.00 ±" not in line
    store.close()
