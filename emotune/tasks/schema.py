"""Every key a task file of each of our kinds may hold, as pydantic models (extra keys forbidden, like the
training config): one model per kind, named by its registry entry (emotune.tasks.registry). What the keys
must say together (an ICL task's placeholders and templates) is emotune.tasks.icl. Torch-free:
`emotune eval` checks every task file here before any model is loaded (emotune.tasks.files.check_task_file);
a problem is one EmotuneError line naming the file and the dotted key.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from emotune.errors import EmotuneError
from emotune.plumbing import task_file_line
from emotune.tasks.task import ICE_TOKEN

# the synthetic language oracle's smoothing, the `kind: oracle` default (emotune.synthetic.oracle uses this one)
ORACLE_EPS = 1e-6


def read_task_file(model: type[BaseModel], raw: dict[str, Any], source: str):
    """`raw` (a task file's mapping) validated by `model`; EmotuneError naming the key otherwise."""
    try:
        return model(**raw)
    except ValidationError as err:
        raise EmotuneError(task_file_line(err, source)) from None


class IclTaskFile(BaseModel):
    """Every key a `kind: icl` task file may hold, with its type; what the keys must say together
    (placeholders, ice token, templates) is checked by emotune.tasks.icl (read_icl, check_templates)."""

    model_config = ConfigDict(extra="forbid")
    name: str | int
    kind: Literal["icl"]
    dataset: dict[str, Any] | None = None  # path / name / revision (hub) or data_files (local)
    index_split: str = "train"  # the retrieval index (demos)
    test_split: str = "test"
    input_columns: list[Any] | dict[str, Any] | str | None = None  # column(s) -> placeholder
    column_token_map: dict[str, Any] | None = None  # OpenICL's name for input_columns
    label_column: str | int = "label"
    templates: dict[Any, Any]  # label -> template, in template order
    ice_num: Annotated[int, Field(strict=True, ge=0)] = 8
    ice_token: Any = ICE_TOKEN
    options: dict[str, Any] | None = None  # per-task protocol settings (scoring)
    shards: Any = 1  # checked by emotune.tasks.shards.check_shards


class MmluPrompt(BaseModel):
    """The prompt design, from the task file's `prompt:` (str.format fields as documented in mmlu.yaml)."""

    model_config = ConfigDict(extra="forbid")
    hint: str = Field(description="before the demos; field {subject}")
    question: str = Field(description="a question and its choices; fields {question}, {A}, {B}, {C}, {D}")
    answer: str = Field(description="after a question; field {answer} (a letter)")
    demo_end: str = Field(description="after every demo's answer")
    ice_separator: str = Field(description="between demos")
    ice_end: str = Field(description="after the last demo")


class MmluTaskFile(BaseModel):
    """Every key of a `kind: mmlu` task file."""

    model_config = ConfigDict(extra="forbid")
    name: str | int
    kind: Literal["mmlu"]
    dataset: dict[str, Any] = Field(default_factory=dict)
    test_split: str = "test"
    dev_split: str = "dev"
    shots: Annotated[int, Field(strict=True, ge=0)] = 5
    subjects: Literal["all"] | list[str] = "all"
    prompt: MmluPrompt | None = None  # default: the shipped mmlu.yaml's
    options: dict[str, Any] | None = None
    shards: Any = 1  # the scheduler's jobs per checkpoint (emotune.tasks.shards checks it)


class PrefixFilter(BaseModel):
    """Which test rows give a prefix (the paper's rule; see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    max_rows: Annotated[int, Field(strict=True, ge=1)] = 4000
    min_chars: Annotated[int, Field(strict=True, ge=0)] = 100
    extra_words: Annotated[int, Field(strict=True, ge=0)] = 10
    exclude: Annotated[list[Annotated[str, Field(min_length=1)]], BeforeValidator(lambda v: [v] if isinstance(v, str)
                                                                                  else v)] = ["=="]


class GenerationTaskFile(BaseModel):
    """Every key a `kind: generation` task file may hold (dataset and options are read by emotune.tasks.files and
    emotune.eval.options)."""

    model_config = ConfigDict(extra="forbid")
    name: str | int = "generation"
    kind: Literal["generation"] = "generation"
    dataset: dict[str, Any] = Field(default_factory=dict)
    options: dict[str, Any] | None = None
    text_column: Annotated[str, Field(min_length=1)]  # the column holding the text
    prefix_words: Annotated[int, Field(strict=True, ge=1)]
    continuation_words: Annotated[int, Field(strict=True, ge=1)]
    new_tokens: Annotated[int, Field(strict=True, ge=1)]  # min_new_tokens; max_new_tokens = new_tokens + 1
    # the EOS rule of the one MAUVE protocol (eval/generation/protocol.py): the paper's `min_new_tokens`, or
    # `ignore` (exactly new_tokens tokens, EOS neither stops nor is masked)
    eos: Literal["min_new_tokens", "ignore"] = "min_new_tokens"
    test_split: str = "test"
    ce_split: str | None = "validation"  # validation text for the forward / reverse CE; none = skip it
    prefix_filter: PrefixFilter = Field(default_factory=PrefixFilter)
    lm_min_words: Annotated[int, Field(strict=True, ge=0)] = 20  # PPL_test / CE texts: >= this many words ...
    lm_max_tokens: Annotated[int, Field(strict=True, ge=2)] = 500  # ... and at most this many tokens


class OracleTaskFile(BaseModel):
    """Every key of a `kind: oracle` task file."""

    model_config = ConfigDict(extra="forbid")
    name: str | int
    kind: Literal["oracle"] = "oracle"
    n_samples: Annotated[int, Field(strict=True, ge=1)] = 64  # free-running samples from BOS (PPL_oracle, ...)
    max_new_tokens: Annotated[int, Field(strict=True, ge=1)] = 128  # ... stopping at EOS or here
    seed: Annotated[int, Field(strict=True, ge=0)] = 0
    n_texts: Annotated[int, Field(strict=True, ge=1)] = 100  # validation / test texts scored
    eps: Annotated[float, Field(gt=0, lt=1)] = ORACLE_EPS  # the oracle's smoothing (reverse CE, PPL_oracle)
    # MAUVE by the paper's protocol (emotune.eval.generation.protocol) on the packed held-out stream
    mauve_prefixes: Annotated[int, Field(strict=True, ge=4)] = 256  # windows, each from a document start
    mauve_prefix_tokens: Annotated[int, Field(strict=True, ge=1)] = 20  # P
    mauve_new_tokens: Annotated[int, Field(strict=True, ge=1)] = 80  # G: sampled, and the reference's length
    mauve_runs: Annotated[int, Field(strict=True, ge=1)] = 5
    mauve_eos: Literal["ignore", "min_new_tokens"] = "ignore"  # EOS neither stops nor is masked
    # the featuriser: `minilm` (the packaged all-MiniLM-L6-v2 encoder), a model folder (relative: to
    # data_dir), or `none` (no MAUVE)
    featurizer: Annotated[str, Field(min_length=1)] = "minilm"
    # features of a text: `last` token's final hidden state (mauve-text's rule), `mean` over its tokens, `auto` =
    # mean for a sentence encoder, last otherwise
    mauve_pooling: Literal["auto", "last", "mean"] = "auto"
    # featuriser tokens per text: `auto` = the longest text's, nothing cut; a number cuts (and counts) the longer
    mauve_max_length: Literal["auto"] | Annotated[int, Field(strict=True, ge=1)] = "auto"
    dataset: dict[str, Any] = Field(default_factory=dict)
    options: dict[str, Any] | None = None


class InstructTaskFile(BaseModel):
    """Every key of a `kind: instruct` task file (instruction following, docs/instruct-eval.md)."""

    model_config = ConfigDict(extra="forbid")
    name: str | int
    kind: Literal["instruct"] = "instruct"
    dataset: dict[str, Any] = Field(default_factory=dict)
    test_split: str = "eval"
    instruction_column: Annotated[str, Field(min_length=1)] = "instruction"
    input_column: str | None = None  # an optional input shown with the instruction (Alpaca's "input")
    reference_column: str | None = "output"  # the set's reference responses (`--against reference`)
    generator_column: str | None = "generator"  # who wrote the reference
    dataset_column: str | None = "dataset"  # the source subset of each instruction (AlpacaEval's `dataset`)
    options: dict[str, Any] | None = None  # decoding defaults (emotune.eval.instruct.task.InstructOptions)
