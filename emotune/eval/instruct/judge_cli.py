"""`emotune judge A.json B.json --judge DIR [--judge-format F] --out DIR [key=value ...]`: compare two outputs
files in AlpacaEval's format with a local judge (both orders), write DIR/pairwise.json, print the table.

What the scheduled pairwise job runs (emotune.scheduling.pairwise); by hand it judges any two files, e.g.
two runs' `alpaca_eval.outputs.json`, or ours against an official AlpacaEval outputs file."""

from __future__ import annotations

from pathlib import Path

from emotune.errors import ArgumentParser
from emotune.eval.options import help_text, parse_overrides

RESULT = "pairwise.json"


def main(argv: list[str]) -> int:
    ap = ArgumentParser(prog="emotune judge", description=__doc__.splitlines()[0], epilog=help_text())
    ap.add_argument("a", help="side A: an outputs JSON in AlpacaEval's format (the win / tie / lose are A's)")
    ap.add_argument("b", help="side B: an outputs JSON in AlpacaEval's format")
    ap.add_argument("--judge", required=True, help="a local causal LM folder or hub id")
    ap.add_argument("--judge-format", default="plain", help="autoj | pandalm | plain (default plain)")
    ap.add_argument("--out", required=True, help="output folder (pairwise.json)")
    ap.add_argument("overrides", nargs="*", help="key=value settings (judge_mode, judge_max_new_tokens, dtype, ...)")
    try:
        args = ap.parse_intermixed_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    opts = parse_overrides(args.overrides)
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
