"""`bayes_accuracy` beside the model's accuracy for a task that knows each row's Bayes-optimal label
(`options.bayes_column`, the demo's synthetic topic task), the same from the records as from a merge."""

from __future__ import annotations

import math

import pytest

from emotune.errors import EmotuneError
from emotune.eval.icl.classification import bayes_labels
from emotune.tasks.files import task_from_dict
from emotune.tasks.metrics import icl_metrics

TASK = {"name": "t", "kind": "icl", "input_columns": ["text"], "label_column": "label",
        "templates": {0: "<X> a", 1: "<X> b"}, "options": {"bayes_column": "bayes_label"}}


def test_bayes_accuracy_and_its_stderr():
    records = [{"correct": c, "bayes_correct": b} for c, b in [(1, 1), (0, 1), (1, 0), (0, 1), (1, 1)]]
    m = icl_metrics(records)
    assert m["accuracy"] == 0.6 and m["bayes_accuracy"] == 0.8
    assert m["bayes_accuracy_stderr"] == pytest.approx(math.sqrt(0.8 * 0.2 / 4))  # sample variance, n - 1
    assert "bayes_accuracy" not in icl_metrics([{"correct": True}])  # a task without the column: accuracy only


def test_bayes_labels_read_and_checked():
    task = task_from_dict(TASK)
    assert bayes_labels(task, [{"text": "x", "label": 0, "bayes_label": 1}]) == [1]
    assert bayes_labels(task_from_dict({**TASK, "options": {}}), [{"text": "x", "label": 0}]) is None
    with pytest.raises(EmotuneError, match="bayes_label"):
        bayes_labels(task, [{"text": "x", "label": 0}])
    with pytest.raises(EmotuneError, match="bayes_label"):
        bayes_labels(task, [{"text": "x", "label": 0, "bayes_label": 7}])  # not a label of the task
