"""The evaluator's options, one pydantic grammar (like the training config): `emotune eval ... key=value`.

`EvalOptions` holds every `key=value` setting of `emotune eval`, each with its meaning (shown by
`emotune eval --help`). `GenerationOptions` holds the same generation settings resolved for one
`kind: generation` task: its defaults, then the task file's `options:`, then the command line where
it sets a value. Both reject unknown keys and report a bad value as one EmotuneError line naming the key.
Torch-free, so a bad argument fails before torch is imported.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from emotune.errors import EmotuneError
from emotune.plumbing import argument_line, first_problem, key_values

METRICS = ("mauve", "rouge", "ppl_test", "ppl_oracle", "ce")
DTYPE_NAMES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16", "auto")

Positive = Annotated[int, Field(strict=True, ge=1)]
Flag = Annotated[bool, Field(strict=True)]

# generation settings: (type, meaning); GenerationOptions gives their defaults, EvalOptions leaves them unset
_GEN_DOC = {
    "runs": "samples per prefix (default 5, the paper's runs)",
    "seed": "sampling seed (default 0); every (prefix, run) has its own generator",
    "gen_batch_size": "prompts per generation batch (default 32)",
    "featurizer": "MAUVE features: hub id or local folder; default gpt2-large (offline: a local MiniLM); none = skip",
    "max_text_length": "MAUVE: tokens per text fed to the featurizer (default 256)",
    "pooling": "MAUVE: last (mauve-text's rule) | mean; default auto (mean for sentence-transformers folders)",
    "feature_cache_dir": "MAUVE human-feature cache (default <cache_dir or $EMOTUNE_CACHE>/mauve-features)",
    "oracle": "a causal LM whose perplexity of the samples is PPL_oracle (skipped if unset)",
    "reference": "a causal LM for the forward / reverse token-level cross-entropy (skipped if unset)",
    "ce_vocab_size": "compare only the first V entries of both vocabularies (padded output layers)",
    "metrics": f"generation metrics to compute, a list or comma-separated ({', '.join(METRICS)}; default all)",
    "lm_limit": "only the first N texts for PPL_test and the cross-entropy",
}


def _metric_list(value: Any) -> Any:
    """A comma-separated string becomes a list; every name must be a known metric."""
    if isinstance(value, str):
        value = [m.strip() for m in value.split(",") if m.strip()]
    return value


def _known_metrics(value: list[str]) -> list[str]:
    bad = [m for m in value if m not in METRICS]
    if bad:
        raise ValueError(f"unknown metric {bad[0]!r} (known: {', '.join(METRICS)})")
    return value


def _check_given(value: Any) -> Any:
    """As given on the command line (a string stays a string: it is part of the resume key), but checked."""
    _known_metrics(_metric_list(value) if isinstance(value, str) else list(value))
    return value


MetricList = Annotated[list[str], BeforeValidator(_metric_list), AfterValidator(_known_metrics)]
GivenMetrics = Annotated[str | list[str], AfterValidator(_check_given)]


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, arbitrary_types_allowed=True)


class EvalOptions(_Options):
    """`emotune eval` key=value settings (the task file says what to evaluate, these say how)."""

    encoder: str = Field("default", description="sentence-transformers model for TopK retrieval; "
                         "all-mpnet-base-v2 is the paper's, default the small all-MiniLM-L6-v2")
    roundtrip_tokenizer: str | None = Field("model", description="OpenICL's tokenize/decode before embedding: "
                                            "model | a tokenizer path | none")
    scoring: Literal["full", "continuation"] | None = Field(None, description="full (OpenICL's PPL rule) | "
                                                            "continuation; default the task file's options.scoring, else full")
    shared_prefix: Flag = Field(True, description="score the candidates' common token prefix once (same scores, faster)")
    batch_size: Positive = Field(8, description="test inputs per model call")
    dtype: str = Field("auto", description="float32 | bfloat16 | float16 | auto (bfloat16 on a GPU that has it, "
                       "else float32)")
    device: str | None = Field(None, description="cpu | cuda | cuda:1 ... (default cuda if available)")
    limit: Positive | None = Field(None, description="evaluate only the first N test rows (per subject for MMLU)")
    max_tokens: Positive | None = Field(None, description="longest prompt scored, default and at most the model's "
                                        "positions: longer ones lose their last demos (OpenICL's "
                                        "max_model_token_num, OpenCompass' max_seq_len; docs/evaluation.md)")
    data_dir: str | None = Field(None, description="local data: DIR/<task>/<split>.jsonl|csv|parquet (or DIR/<split>.*)")
    cache_dir: str | None = Field(None, description="retriever embedding cache (default $EMOTUNE_CACHE or "
                                  "~/.cache/emotune)")
    retriever_batch_size: Positive = Field(64, description="texts per retriever encoder call")
    progress: Flag = Field(True, description="show progress bars")
    resume: Flag = Field(True, description="reuse the finished tasks of DIR/summary.json made with the same settings")
    trust_remote_code: Flag = Field(False, description="run the checkpoint's own Python code (only if you trust it)")
    shard: str | None = Field(None, description="K/N: evaluate only the K-th of N contiguous ranges of the test "
                              "rows (ICL and MMLU tasks; the scheduler's sharded jobs, docs/scheduling.md)")
    # generation suites (docs/generation-eval.md): unset = the task file's options, else the default named
    runs: Positive | None = Field(None, description=_GEN_DOC["runs"])
    seed: Annotated[int, Field(strict=True, ge=0)] | None = Field(None, description=_GEN_DOC["seed"])
    gen_batch_size: Positive | None = Field(None, description=_GEN_DOC["gen_batch_size"])
    featurizer: str | None = Field(None, description=_GEN_DOC["featurizer"])
    max_text_length: Positive | None = Field(None, description=_GEN_DOC["max_text_length"])
    pooling: str | None = Field(None, description=_GEN_DOC["pooling"])
    feature_cache_dir: str | None = Field(None, description=_GEN_DOC["feature_cache_dir"])
    oracle: str | None = Field(None, description=_GEN_DOC["oracle"])
    reference: str | None = Field(None, description=_GEN_DOC["reference"])
    ce_vocab_size: Positive | None = Field(None, description=_GEN_DOC["ce_vocab_size"])
    metrics: GivenMetrics | None = Field(None, description=_GEN_DOC["metrics"])
    lm_limit: Positive | None = Field(None, description=_GEN_DOC["lm_limit"])
    # instruction following (docs/instruct-eval.md): unset = the task file's options, else the default named
    prompt: Literal["alpaca", "chat"] | None = Field(None, description="instruct: the prompt the model was tuned "
                                                     "with: alpaca (default) | chat (the tokenizer's chat template)")
    decoding: Literal["greedy", "sample"] | None = Field(None, description="instruct: greedy (default) | sample")
    temperature: Annotated[float, Field(gt=0)] | None = Field(None, description="instruct, decoding=sample: "
                                                              "temperature (default 0.7)")
    max_new_tokens: Positive | None = Field(None, description="instruct: response length limit in tokens "
                                            "(default 512; decoding stops at EOS)")
    judge_mode: Literal["generate", "likelihood"] | None = Field(None, description="pairwise judge: generate a "
                                                                 "verdict and parse it, or compare the likelihoods "
                                                                 "of the verdict strings (default: per format)")
    judge_max_new_tokens: Positive | None = Field(None, description="pairwise judge, judge_mode=generate: "
                                                  "verdict length limit (default autoj 1024, pandalm 512, plain 16)")
    judge_num_beams: Positive | None = Field(None, description="pairwise judge, judge_mode=generate: beams (default "
                                             "the judge's own: pandalm 4, autoj and plain 1 = greedy)")
    judge_repetition_penalty: Annotated[float, Field(gt=0)] | None = Field(
        None, description="pairwise judge, judge_mode=generate: Hugging Face repetition penalty (default the "
        "judge's own: pandalm 1.2, autoj and plain 1 = none)")
    bootstrap: Positive | None = Field(None, description="pairwise judge: bootstrap resamples of the win-rate "
                                       "interval (default 1000, seeded by seed)")

    @field_validator("roundtrip_tokenizer", mode="before")
    @classmethod
    def _raw_text(cls, value: Any) -> Any:
        if value in (None, False, "none", "raw"):  # embed the raw text
            return None
        if not isinstance(value, str):
            raise ValueError("use model, none or a tokenizer path")
        return value

    @field_validator("shard", mode="before")
    @classmethod
    def _shard(cls, value: Any) -> Any:
        if value is None:
            return None
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(value))
        if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
            raise ValueError("expected K/N with 1 <= K <= N, e.g. shard=2/8")
        return f"{int(m.group(1))}/{int(m.group(2))}"

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value: str) -> str:
        if value not in DTYPE_NAMES:
            raise ValueError("use float32, bfloat16, float16 or auto")
        return value


class GenerationOptions(_Options):
    """The settings of one `kind: generation` run (meanings as in EvalOptions)."""

    runs: Positive = 5
    seed: Annotated[int, Field(strict=True, ge=0)] = 0
    gen_batch_size: Positive = 32
    batch_size: Positive = 8  # sequences per scoring batch (PPL, CE)
    limit: Positive | None = None  # keep only the first N selected prefixes
    lm_limit: Positive | None = None
    featurizer: Any = "default"
    max_text_length: Positive = 256
    pooling: str = "auto"
    feature_cache_dir: Any = None
    cache_dir: Any = None
    oracle: Any = None  # also a loaded model or an object with next_token_logprobs
    reference: Any = None
    ce_vocab_size: Positive | None = None
    metrics: MetricList = Field(default_factory=lambda: list(METRICS))
    data_dir: Any = None
    device: str | None = None
    progress: bool = False
    trust_remote_code: bool = False


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key=value` arguments (values read as YAML scalars) -> a validated EvalOptions, as a dict."""
    values = key_values(items, EvalOptions.model_fields)
    try:
        return EvalOptions(**values).model_dump()
    except ValidationError as err:
        raise EmotuneError(argument_line(err, values)) from None


def generation_options(task_options: dict[str, Any], given: dict[str, Any], source: str) -> dict[str, Any]:
    """GenerationOptions from the task file's `options:` and the caller's settings (None never undoes a
    value); options of other task kinds in `given` are ignored, unknown ones are errors."""
    known = GenerationOptions.model_fields
    values = {k: v for k, v in task_options.items() if k not in _OTHER_KINDS}
    for key, value in given.items():
        if key in _OTHER_KINDS or value is None:
            continue
        if key not in known:
            raise EmotuneError(f"{source}: unknown generation option {key!r} (known: {', '.join(known)})")
        values[key] = value
    try:
        return GenerationOptions(**values).model_dump()
    except ValidationError as err:
        problem = first_problem(err)
        if problem.type == "extra_forbidden":
            key = problem.loc[0]
            raise EmotuneError(f"{source}: unknown generation option {key!r} (known: {', '.join(known)})") from None
        raise EmotuneError(argument_line(err, values, prefix="option")) from None


# `emotune eval` passes every option to every task kind; these mean nothing to a generation task
_OTHER_KINDS = {"encoder", "roundtrip_tokenizer", "scoring", "shared_prefix", "max_tokens", "retriever_batch_size",
                "resume", "dtype", "shard", "prompt", "decoding", "temperature", "max_new_tokens", "judge_mode",
                "judge_max_new_tokens", "judge_num_beams", "judge_repetition_penalty", "bootstrap"}


def help_text(options: type[BaseModel] = EvalOptions) -> str:
    """The options and their meaning, for `emotune eval --help` (or another command's own options)."""
    lines = []
    for name, field in options.model_fields.items():
        default = field.get_default(call_default_factory=True)
        lines.append(f"  {name}={'' if default is None else default}\n      {field.description}")
    return "options (key=value):\n" + "\n".join(lines)
