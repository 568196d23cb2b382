"""`kind: instruct`: a model's responses to a set of instructions, in AlpacaEval's outputs format.

The recipe (docs/instruct-eval.md):

 1. instructions  the task's test split (AlpacaEval: 805 instructions), every row checked first;
 2. prompt        the template the model was tuned with: `alpaca` (emotune.prompts, what `data.format:
                  instruction` trains on: BOS + template, as in training) or `chat` (the tokenizer's chat
                  template, one user turn, generation prompt added);
 3. decoding      greedy (default) or sampled at `temperature` (per-instruction seeded generators), at most
                  `max_new_tokens` new tokens, stopping at EOS; batched by prompt length and batch-invariant
                  (emotune.eval.generation.sampling, the generation suite's sampler);
 4. outputs       `<task>.outputs.json`: `[{instruction, output, generator, dataset}]`, written atomically
                  after every record is checked (emotune.eval.instruct.outputs), ready for `alpaca_eval`.

The pairwise judge (emotune.eval.instruct.judge) compares two such files.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from emotune.errors import EmotuneError
from emotune.eval.generation.sampling import _eos_ids, row_seed, sample_batch
from emotune.eval.instruct.outputs import write_outputs
from emotune.eval.summary import TaskResult
from emotune.plumbing import argument_line
from emotune.prompts import alpaca_prompt
from emotune.tasks.schema import InstructTaskFile, read_task_file
from emotune.tasks.task import Task


class InstructOptions(BaseModel):
    """How the responses are made: the task file's `options:`, then the command line where it sets a value."""

    model_config = ConfigDict(extra="forbid")
    prompt: Literal["alpaca", "chat"] = "alpaca"
    decoding: Literal["greedy", "sample"] = "greedy"
    temperature: float = Field(0.7, gt=0)  # decoding=sample only
    max_new_tokens: int = Field(512, ge=1)
    seed: int = Field(0, ge=0)
    gen_batch_size: int = Field(8, ge=1)
    limit: int | None = Field(None, ge=1)
    data_dir: Any = None
    progress: bool = False


def instruct_options(task: Task, given: dict[str, Any]) -> dict[str, Any]:
    """InstructOptions from the task file and `given` (the evaluator's options; other kinds' keys ignored)."""
    known = InstructOptions.model_fields
    values = dict(task.options)
    values.update({k: v for k, v in given.items() if k in known and v is not None})
    try:
        return InstructOptions(**values).model_dump()
    except ValidationError as err:
        raise EmotuneError(f"{task.source}: " + argument_line(err, values, prefix="option")) from None


def spec_of(task: Task) -> InstructTaskFile:
    return read_task_file(InstructTaskFile, task.raw, task.source)


def load_instructions(task: Task, data_dir: Any = None, limit: int | None = None) -> list[dict[str, Any]]:
    """The test split's rows, every row checked for a non-blank instruction (and the optional columns' types)."""
    from emotune.eval.task_data import load_split

    spec = spec_of(task)
    rows = load_split(task, spec.test_split, data_dir)
    if not rows:
        raise EmotuneError(f"{task.source}: split {spec.test_split!r} of task {task.name!r} has no rows")
    for n, row in enumerate(rows, 1):
        value = row.get(spec.instruction_column)
        if not isinstance(value, str) or not value.strip():
            raise EmotuneError(f"{task.source}: split {spec.test_split!r} row {n} has no instruction in column "
                               f"{spec.instruction_column!r} (key 'instruction_column'; columns: {sorted(row)})")
        for key in ("input_column", "reference_column", "generator_column", "dataset_column"):
            col = getattr(spec, key)
            if col is not None and row.get(col) is not None and not isinstance(row[col], str):
                raise EmotuneError(f"{task.source}: split {spec.test_split!r} row {n} column {col!r} (key "
                                   f"{key!r}) is a {type(row[col]).__name__}, not text")
    return rows[:limit] if limit else rows


def reference_outputs(task: Task, rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The set's own reference responses (AlpacaEval: text-davinci-003's), as an outputs list."""
    spec = spec_of(task)
    col = spec.reference_column
    if col is None:
        raise EmotuneError(f"{task.source}: task {task.name!r} has no reference responses (key 'reference_column')")
    out = []
    for n, row in enumerate(rows, 1):
        if not isinstance(row.get(col), str):
            raise EmotuneError(f"{task.source}: row {n} has no reference response in column {col!r} "
                               "(key 'reference_column'), so --against reference cannot be used")
        out.append(_record(spec, row, row[col], str(row.get(spec.generator_column or "", None) or "reference")))
    return out


def _record(spec: InstructTaskFile, row: dict[str, Any], output: str, generator: str) -> dict[str, str]:
    instruction = row[spec.instruction_column]
    extra = row.get(spec.input_column) if spec.input_column else None
    if extra and str(extra).strip():  # what the model saw; AlpacaEval's own set has no inputs
        instruction = f"{instruction}\n\n{extra}"
    dataset = row.get(spec.dataset_column) if spec.dataset_column else None
    return {"instruction": instruction, "output": output, "generator": generator, "dataset": str(dataset or "")}


def render_prompt(tokenizer, instruction: str, input_: str | None, mode: str) -> list[int]:
    """The prompt's token ids: the Alpaca template with the tokenizer's special tokens (exactly as
    emotune.train.data tokenises it in training), or the chat template's user turn + generation prompt."""
    if mode == "alpaca":
        return list(tokenizer(alpaca_prompt(instruction, input_), add_special_tokens=True)["input_ids"])
    if not getattr(tokenizer, "chat_template", None):
        raise EmotuneError(f"prompt=chat: the tokenizer of {getattr(tokenizer, 'name_or_path', '?')} has no chat "
                           "template (use prompt=alpaca, the template `data.format: instruction` trains on)")
    text = instruction if not (input_ and input_.strip()) else f"{instruction}\n\n{input_}"
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                        tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # transformers 5 may return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def decode_responses(model, tokenizer, prompts: list[list[int]], opts: dict[str, Any]) -> list[list[int]]:
    """New tokens per prompt (ending at EOS if reached), batched by length, results in prompt order."""
    eos = _eos_ids(tokenizer, model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    temperature = 0.0 if opts["decoding"] == "greedy" else float(opts["temperature"])
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    out: list[list[int]] = [[] for _ in prompts]
    t0, bs = time.time(), opts["gen_batch_size"]
    for start in range(0, len(order), bs):
        chunk = order[start : start + bs]
        seeds = [row_seed(opts["seed"], 0, i) for i in chunk]
        news = sample_batch(model, [prompts[i] for i in chunk], seeds, 0, opts["max_new_tokens"], eos, pad,
                            temperature=temperature)
        for i, toks in zip(chunk, news):
            out[i] = toks
        if opts["progress"]:
            print(f"[instruct] {min(start + bs, len(order))}/{len(order)} responses ({time.time() - t0:.0f}s)",
                  flush=True)
    return out


def generator_name(model) -> str:
    return str(getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__)


def run_instruct_task(task: Task, model, tokenizer, out_dir, **options: Any) -> TaskResult:
    """Respond to every instruction; write `<out_dir>/<task>.outputs.json` (AlpacaEval's format)."""
    t0 = time.time()
    opts = instruct_options(task, options)
    spec = spec_of(task)
    rows = load_instructions(task, opts["data_dir"], opts["limit"])
    model.eval()
    prompts = [render_prompt(tokenizer, r[spec.instruction_column],
                             r.get(spec.input_column) if spec.input_column else None, opts["prompt"]) for r in rows]
    news = decode_responses(model, tokenizer, prompts, opts)
    eos = set(_eos_ids(tokenizer, model))
    generator = generator_name(model)
    records = [_record(spec, row, tokenizer.decode(toks, skip_special_tokens=True).strip(), generator)
               for row, toks in zip(rows, news)]
    name = f"{task.name}.outputs.json"
    write_outputs(Path(out_dir) / name, records)
    lengths = [len(t) - (1 if t and t[-1] in eos else 0) for t in news]
    settings = {"prompt": opts["prompt"], "decoding": opts["decoding"], "max_new_tokens": opts["max_new_tokens"],
                "temperature": opts["temperature"] if opts["decoding"] == "sample" else 0.0, "seed": opts["seed"],
                "stop": "EOS", "generator": generator, "test_split": spec.test_split, "limit": opts["limit"],
                "format": "alpaca_eval outputs [{instruction, output, generator, dataset}]"}
    metrics = {"mean_new_tokens": float(np.mean(lengths)),
               "eos_rate": float(np.mean([bool(t and t[-1] in eos) for t in news]))}
    return TaskResult(task=task.name, kind="instruct", metrics=metrics, n_examples=len(records), predictions=name,
                      seconds=time.time() - t0, settings=settings)
