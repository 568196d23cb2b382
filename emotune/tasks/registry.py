"""The task kinds: one entry per kind says everything the rest of the package asks about it.

A task file's `kind:` picks its entry (emotune.tasks.files); the evaluator runs the entry's `evaluator`
(emotune.eval.kinds imports it when a task of that kind runs, so this module stays torch-free); the
scheduler and the shard merge (emotune.tasks.shards) ask whether it shards and how its metrics come from
its per-row records; `emotune eval`'s resume check (emotune.eval.resume) builds its result key from
`result_fields` and `result_options`. A new kind is one entry here plus its schema and evaluator;
tests/tasks/test_registry.py checks that every entry is complete and every evaluator entry imports.

`lm_eval` is lm-evaluation-harness's kind: its tasks are the harness's own YAML files or registry names
(emotune.tasks.harness), run by `emotune eval --evaluator lm_eval`; it has no task file of ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import BaseModel

from emotune.errors import EmotuneError
from emotune.tasks.harness import HARNESS
from emotune.tasks.icl import read_icl, read_mmlu
from emotune.tasks.metrics import OPENCOMPASS_NAMES, icl_metrics, mmlu_metrics
from emotune.tasks.schema import GenerationTaskFile, IclTaskFile, InstructTaskFile, MmluTaskFile, OracleTaskFile

HIGHER, LOWER = True, False  # a metric's direction: is a higher value better?


@dataclass(frozen=True)
class Kind:
    name: str  # the task file's `kind:` (and the `kind` of its results in summary.json and the store)
    # "module:function" run(task, model, tokenizer, out_dir, **options) -> TaskResult (emotune.eval.kinds);
    # lm_eval's is run_harness(model, specs, out, settings, suite): the harness loads the model itself
    evaluator: str
    metrics: dict[str, bool]  # the scores its results report -> HIGHER / LOWER is better
    result_options: tuple[str, ...]  # the `emotune eval` options its results depend on (the resume key)
    schema: type[BaseModel] | None = None  # every key its task file may hold; None: no task file of ours
    read: Callable[[Any, dict, str], None] | None = None  # fills its own Task fields from the task file
    result_fields: tuple[str, ...] = ()  # Task attributes its results depend on (the resume key)
    # its prompts are fitted to the model's positions (emotune.eval.icl.fit): the fitting rule's version is
    # part of its result key, and a shard merge recounts the rows the fitting touched
    fits_prompts: bool = False
    # metrics from its per-row records; a kind that has them can be split into shards (emotune.tasks.shards)
    row_metrics: Callable[[list[dict]], dict[str, float]] | None = None
    rows: str | None = None  # "module:function"(task, data_dir, limit) -> the number of rows shards split
    check_data: str | None = None  # "module:function"(task, data_dir): its data checked before a model loads
    retriever: bool = False  # its evaluator takes the TopK retriever of the demos (`retriever=`)
    judged: bool = False  # its responses are what `--against` compares with the pairwise judge
    average: str | None = None  # the summary's `averages` key of the mean accuracy over tasks of this kind
    output_type: str | None = None  # lm-evaluation-harness's output_type for such a task (None: the name)
    harness_names: bool = False  # its metrics already carry the harness's names (results.json keeps them)
    opencompass_names: dict[str, str] = field(default_factory=dict)  # OpenCompass' names for its metrics

    @property
    def shards(self) -> bool:
        return self.row_metrics is not None


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("icl", "emotune.eval.icl.classification:run_icl_task", {"accuracy": HIGHER, "bayes_accuracy": HIGHER},
         ("scoring", "encoder", "roundtrip_tokenizer", "limit", "max_tokens", "data_dir", "shard"),
         IclTaskFile, read_icl, result_fields=("ice_num",), fits_prompts=True, row_metrics=icl_metrics,
         rows="emotune.eval.task_data:count_test_rows", check_data="emotune.eval.task_data:check_icl_data",
         retriever=True, average="icl_mean_accuracy", output_type="multiple_choice"),
    Kind("mmlu", "emotune.eval.icl.mmlu:run_mmlu_task", {"accuracy": HIGHER, "accuracy_macro": HIGHER},
         ("scoring", "limit", "max_tokens", "data_dir", "shard"), MmluTaskFile, read_mmlu, fits_prompts=True, row_metrics=mmlu_metrics,
         rows="emotune.eval.icl.mmlu:count_questions", output_type="multiple_choice",
         opencompass_names=OPENCOMPASS_NAMES),
    Kind("generation", "emotune.eval.generation.task:run_generation_task",
         {"mauve": HIGHER, "ppl_oracle": LOWER, "ppl_test": LOWER, "forward_ce": LOWER, "reverse_ce": LOWER},
         ("runs", "seed", "limit", "lm_limit", "featurizer", "max_text_length", "pooling", "oracle", "reference",
          "ce_vocab_size", "metrics", "data_dir"), GenerationTaskFile, output_type="generate_until"),
    Kind("oracle", "emotune.eval.oracle_task:run_oracle_task",
         {"ppl_test": LOWER, "ppl_oracle": LOWER, "forward_ce": LOWER, "reverse_ce": LOWER, "mauve": HIGHER},
         ("limit", "data_dir", "featurizer"), OracleTaskFile, output_type="loglikelihood_rolling"),
    # its task runs the responses; the win rate comes from the pairwise judge (`--against`, `emotune pairwise`)
    Kind("instruct", "emotune.eval.instruct.task:run_instruct_task", {"win_rate": HIGHER},
         ("prompt", "decoding", "temperature", "max_new_tokens", "seed", "limit", "data_dir"), InstructTaskFile,
         judged=True),
    # the harness's results carry their own metric names and `higher_is_better`
    Kind(HARNESS, "emotune.eval.harness:run_harness", {}, (), harness_names=True),
)}


def task_file_kinds() -> tuple[str, ...]:
    """What a task file's `kind:` may say: the kinds with a schema of ours."""
    return tuple(k for k, entry in KINDS.items() if entry.schema is not None)


def shardable_kinds() -> tuple[str, ...]:
    return tuple(k for k, entry in KINDS.items() if entry.shards)


def kind_of(name: str, where: str = "task") -> Kind:
    """The registry entry of kind `name` (one EmotuneError line naming `where` for an unknown one)."""
    entry = KINDS.get(name)
    if entry is None:
        raise EmotuneError(f"{where}: unknown task kind {name!r} (known: {', '.join(KINDS)})")
    return entry
