"""The metrics of the shardable kinds from their per-row records: the evaluator computes a task's metrics
with these, and a shard merge (emotune.tasks.shards) recomputes them over all shards' rows, so the merged
numbers are exactly the unsharded ones.
"""

from __future__ import annotations

from emotune.stats import with_stderr


def icl_metrics(records: list[dict]) -> dict[str, float]:
    """Accuracy; and where every record knows the Bayes-optimal prediction (a task with `options.bayes_column`,
    emotune.eval.icl.classification), `bayes_accuracy`: that prediction's accuracy on the same rows."""
    n = len(records)
    metrics, counts = {"accuracy": sum(bool(r["correct"]) for r in records) / n if n else 0.0}, {"accuracy": n}
    if n and all("bayes_correct" in r for r in records):
        metrics["bayes_accuracy"] = sum(bool(r["bayes_correct"]) for r in records) / n
        counts["bayes_accuracy"] = n
    return with_stderr(metrics, counts)


# OpenCompass' names for MMLU's two accuracies (its summarizer): `mmlu` is the mean over subjects (its
# headline), `mmlu-weighted` the accuracy over all questions; ours are accuracy_macro and accuracy.
OPENCOMPASS_NAMES = {"mmlu": "accuracy_macro", "mmlu-weighted": "accuracy"}


def mmlu_metrics(records: list[dict]) -> dict[str, float]:
    """Micro accuracy over questions, macro over subjects (in the order they first appear), per subject."""
    per: dict[str, list[int]] = {}
    for r in records:
        c = per.setdefault(str(r["subject"]), [0, 0])
        c[0] += bool(r["correct"])
        c[1] += 1
    total = sum(n for _, n in per.values())
    metrics = {"accuracy": sum(c for c, _ in per.values()) / total,
               "accuracy_macro": sum(c / n for c, n in per.values()) / len(per)}
    metrics.update({f"subject/{s}": c / n for s, (c, n) in per.items()})
    # the harness's stderr for every proportion (the macro mean is not one: it has none)
    return with_stderr(metrics, {"accuracy": total, **{f"subject/{s}": n for s, (_, n) in per.items()}})


def row_counts(records: list[dict]) -> dict[str, int]:
    """How many rows of an ICL / MMLU task lost demos or tokens to the model's positions
    (emotune.eval.icl.fit); a shard merge recomputes them over all shards' rows."""
    return {"rows_demos_dropped": sum(r.get("demos_dropped", 0) > 0 for r in records),
            "rows_truncated": sum(r.get("truncated_tokens", 0) > 0 for r in records)}
