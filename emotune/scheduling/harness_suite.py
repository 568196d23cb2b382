"""Suites run by lm-evaluation-harness: what the scheduler needs to know about them (no torch, no lm_eval).

A suite entry `{evaluator: lm_eval, tasks: [...]}` (in configs/eval/suites.yaml or a suite file of your own)
is scheduled like ours, one job per (checkpoint, harness task), each running
`emotune eval --evaluator lm_eval --tasks TASK` (emotune.eval.harness). Its version hashes the members'
names, the text of their task files (not their paths; a group file's: every YAML of its folder), the
`--eval-arg` settings and the installed harness's version (its registry's task definitions change with it),
so any of them changing re-evaluates. A member must be something the harness reports a result under: a
task, or a group that aggregates; a tag or a group without an aggregate is refused (list its tasks).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from emotune.tasks.harness import INSTALL_HINT, check_schedulable, lm_eval_version
from emotune.tasks.suites import SuiteSource, harness_members


def _members_text(task) -> list[str]:
    """A group file's members are the task files of its folder (the harness's include path): their text
    goes into the version too, so editing a member re-evaluates the group."""
    if not task.group:
        return []
    return [f"{p.name}\0{p.read_bytes().decode('utf-8', 'replace')}" for p in sorted(Path(task.spec).parent.glob("*.yaml"))]


def resolve_harness_suite(suite: SuiteSource, eval_args: list[str] | tuple[str, ...] = ()):
    """(suite name, version, task specs, task names) of a harness suite (emotune.tasks.suites.find_suite)."""
    tasks = harness_members(suite)
    check_schedulable(tasks, suite.source)
    suite_name = suite.name
    if lm_eval_version() is None:  # the jobs may still have it (a SLURM --setup line activating another venv)
        logging.getLogger("emotune.scheduling").warning(
            "suite %s is run by lm-evaluation-harness, which is not installed here: %s", suite_name, INSTALL_HINT)
    digest = hashlib.sha256(json.dumps({"harness": [[t.name, t.text or t.spec, _members_text(t)] for t in tasks],
                                        "eval_args": list(eval_args), "lm_eval": lm_eval_version()},
                                       sort_keys=True).encode()).hexdigest()[:12]
    return suite_name, digest, tuple(t.spec for t in tasks), tuple(t.name for t in tasks)


def harness_eval_command(default_command: str) -> str:
    """The default evaluator command, run as the harness evaluator."""
    return default_command.replace(" eval ", " eval --evaluator lm_eval ", 1)
