"""Our summary in lm-evaluation-harness's results schema (`DIR/results.json` beside `DIR/summary.json`).

So that tools written for the harness (its `make_table`, leaderboards, notebooks) read our evaluations:

    {"results": {"sst2": {"name": "sst2", "alias": "sst2", "sample_len": 872, "acc,none": 0.875, "acc_stderr,none": 0.031, ...}},
     "versions": {"sst2": "emotune-2"}, "n-shot": {"sst2": 8},
     "configs": {"sst2": {"task": "sst2", "output_type": "multiple_choice", ...}},
     "higher_is_better": {"sst2": {"acc": true}}, "n-samples": {"sst2": {"original": 872, "effective": 872}},
     "config": {"model": "emotune", "model_args": "pretrained=..."}, "emotune_version": "..."}

Our `accuracy` is the harness's `acc` (its stderr `acc_stderr`, the harness's formula: emotune.stats);
every other metric keeps its name, with the harness's `,none` filter suffix. A summary written by the
harness evaluator (kind `lm_eval`) already uses the harness's names. No torch, no lm_eval import.
"""

from __future__ import annotations

from typing import Any

from emotune import __version__
from emotune.tasks.registry import KINDS

RENAME = {"accuracy": "acc"}  # ours -> the harness's name for the same quantity
LOWER_IS_BETTER = ("ppl", "ce", "nll", "loss", "perplexity", "bits_per_byte", "byte_perplexity", "word_perplexity")


def harness_name(name: str) -> str:
    stderr = name.endswith("_stderr")
    base = name.removesuffix("_stderr")
    return RENAME.get(base, base) + ("_stderr" if stderr else "")


def higher_is_better(name: str) -> bool | None:
    """Direction of a metric by its name (None where a name does not say)."""
    if name.endswith(("_std", "_stderr")):  # a spread, not a score
        return None
    if name.startswith("subject/"):  # MMLU's per-subject accuracy
        return True
    base = name.split("/")[0].lower()
    if any(base == k or base.startswith(k + "_") or base.endswith("_" + k) for k in LOWER_IS_BETTER):
        return False
    if base.startswith(("acc", "mauve", "rouge", "exact_match", "f1", "win")):
        return True
    return None


def to_harness_results(summary: dict[str, Any]) -> dict[str, Any]:
    """The harness's results dict for one of our summaries (emotune.eval.summary format)."""
    out: dict[str, Any] = {"results": {}, "versions": {}, "n-shot": {}, "configs": {}, "higher_is_better": {},
                           "n-samples": {}, "groups": {}, "group_subtasks": {},
                           "config": {"model": "emotune", "model_args": f"pretrained={summary.get('model')}"},
                           "model_name": summary.get("model"), "emotune_version": summary.get("emotune_version",
                                                                                              __version__)}
    for name, r in (summary.get("tasks") or {}).items():
        metrics = {k: v for k, v in (r.get("metrics") or {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        settings = r.get("settings") or {}
        kind = r.get("kind", "")
        entry = KINDS.get(kind)
        names = {k: k if entry and entry.harness_names else harness_name(k) for k in metrics}
        n = int(r.get("n_examples") or 0)
        # the harness's per-result keys (name, alias, sample_len = the documents evaluated), then its metrics
        out["results"][name] = {"name": name, "alias": name, "sample_len": n,
                                **{f"{names[k]},none": float(v) for k, v in metrics.items()}}
        if "subtasks" in settings:  # a harness group (summary written by the harness evaluator)
            out["groups"][name] = out["results"][name]
            out["group_subtasks"][name] = list(settings["subtasks"])
        out["versions"][name] = settings.get("version") or f"emotune-{_protocol()}"
        shots = settings.get("n_shot", settings.get("ice_num", settings.get("shots", 0)))
        out["n-shot"][name] = int(shots) if isinstance(shots, int) else 0
        out["configs"][name] = {"task": name, "output_type": (entry and entry.output_type) or kind, "evaluator":
                                settings.get("evaluator", "emotune"), "kind": kind,
                                "task_file": settings.get("task_file"), "scoring": settings.get("scoring"),
                                "metadata": {"version": out["versions"][name]}}
        if entry and entry.opencompass_names:  # which of its numbers OpenCompass calls `mmlu` (per subject), ...
            oc = settings.get("opencompass_names") or entry.opencompass_names
            out["configs"][name]["opencompass_names"] = {k: f"{harness_name(v)},none" for k, v in oc.items()}
        out["higher_is_better"][name] = {names[k]: higher_is_better(names[k]) for k in metrics
                                         if not names[k].endswith("_stderr")}
        if "subtasks" not in settings:  # the harness counts documents per task, not per group
            out["n-samples"][name] = {"original": int(settings.get("n_original") or n), "effective": n}
    if not out["groups"]:
        del out["groups"]  # as the harness: only where a group aggregates
    return out


def _protocol() -> int:
    from emotune.tasks.task import PROTOCOL

    return PROTOCOL
