"""`emotune judge A.json B.json --judge DIR [--judge-format F] --out DIR [key=value ...]`: compare two outputs
files in AlpacaEval's format with a local judge (both orders), write DIR/pairwise.json, print the table.

What the scheduled pairwise job runs (emotune.scheduling.pairwise); by hand it judges any two files, e.g.
two runs' `alpaca_eval.outputs.json`, or ours against an official AlpacaEval outputs file."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from pydantic import ValidationError

from emotune.errors import ArgumentParser, EmotuneError
from emotune.eval.options import EvalOptions, _Options, help_text
from emotune.plumbing import argument_line, key_values

RESULT = "pairwise.json"
# the evaluator's options that mean something to the judge (the same keys and meanings as `emotune eval`'s)
JUDGE_KEYS = ("judge_mode", "judge_max_new_tokens", "judge_num_beams", "judge_repetition_penalty", "bootstrap",
              "seed", "dtype", "device", "batch_size", "progress")


def _judge_options() -> type[_Options]:
    """EvalOptions' fields of JUDGE_KEYS (copies: two meanings said the judge's way)."""
    from pydantic import create_model

    said = {"seed": "the bootstrap interval's seed (default 0)", "batch_size": "judge prompts per model call"}
    fields = {}
    for key in JUDGE_KEYS:
        field = copy.copy(EvalOptions.model_fields[key])
        field.description = said.get(key, field.description)
        fields[key] = (field.annotation, field)
    return create_model("JudgeOptions", __base__=_Options, **fields)


JudgeOptions = _judge_options()


def parse_judge_options(items: list[str]) -> dict:
    """`key=value` arguments of `emotune judge` -> validated options (only the judge's keys)."""
    values = key_values(items, JudgeOptions.model_fields, " of emotune judge")
    try:
        return JudgeOptions(**values).model_dump()
    except ValidationError as err:
        raise EmotuneError(argument_line(err, values)) from None


def main(argv: list[str]) -> int:
    ap = ArgumentParser(prog="emotune judge", description=__doc__.splitlines()[0],
                        epilog=help_text(JudgeOptions), formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="side A: an outputs JSON in AlpacaEval's format (the win / tie / lose are A's)")
    ap.add_argument("b", help="side B: an outputs JSON in AlpacaEval's format")
    ap.add_argument("--judge", required=True, help="a local causal LM folder or hub id")
    ap.add_argument("--judge-format", default="plain", help="autoj | pandalm | plain (default plain)")
    ap.add_argument("--out", required=True, help="output folder (pairwise.json)")
    ap.add_argument("overrides", nargs="*", help="key=value settings (listed below)")
    try:
        args = ap.parse_intermixed_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    opts = parse_judge_options(args.overrides)
    from emotune.eval.instruct.outputs import align, read_outputs
    from emotune.eval.instruct.pairwise import check_judge, compare, write_result
    from emotune.eval.instruct.stats import table

    a, b = read_outputs(args.a), read_outputs(args.b)  # every record, before any model loads
    align(a, b, args.a, args.b)
    check_judge(args.judge, args.judge_format)
    from emotune.eval.lm import resolve_device

    opts["device"] = resolve_device(opts["device"])
    result = compare(a, b, args.a, args.b, args.judge, args.judge_format, opts)
    path = write_result(Path(args.out) / RESULT, result)
    print(table(result))
    print(f"[judge] result: {path}")
    return 0
