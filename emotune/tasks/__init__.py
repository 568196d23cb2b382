"""Evaluation tasks as data (yaml and pydantic only, no torch): what a task kind is, what a task file and a
suite say, and how a big task is split into shards. The evaluator (emotune.eval) runs tasks, the scheduler
(emotune.scheduling) queues them; both read them here, so neither depends on the other.

- registry: one entry per task kind (icl, mmlu, generation, oracle, instruct, and lm_eval for the harness):
  its task-file schema, whether it shards, its metrics and their directions, its result key and the
  evaluator entry that runs it. A new kind is one entry there (tests/tasks/test_registry.py checks it).
- task, icl, schema, files: the Task object, the task-file grammar, reading a task by name or path.
- suites: the one suite resolver (a shipped suite name or a suite file).
- harness: lm-evaluation-harness task names and task files.
- metrics, shards: per-row metrics of the shardable kinds; splitting a task into shards and merging them.
"""
