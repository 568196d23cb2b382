"""The `emotune` command line: `emotune COMMAND [args...]`.

Each command lives in its own module with a `main(argv: list[str]) -> int`; modules are imported
only when their command runs, so `emotune --help` stays fast. Bad user input raises
`EmotuneError`: it is printed as one line and the exit status is 2, with no traceback.

The command table sits at the package's top: it names every stage (emotune.launch holds the launchers), and
nothing imports it but `python -m emotune` and the launchers' rank entry (emotune.launch.train_entry). The
`--local_rank` a launcher adds, before or after the command, goes to LOCAL_RANK (emotune.plumbing).
"""

from __future__ import annotations

import importlib
import sys

from emotune.errors import EmotuneError, run_cli
from emotune.plumbing import take_local_rank

# command -> ("module:function", one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("emotune.launch.demo:main", "run the embedded default job (offline, CPU is enough)"),
    "losses": ("emotune.launch.demo:list_losses", "list the training objectives and their parameters"),
    "eval": ("emotune.launch.eval_cmd:main", "evaluate a checkpoint: ICL (TopK + PPL), MMLU 5-shot, generation suites"),
    "judge": ("emotune.eval.instruct.judge_cli:main", "judge two AlpacaEval outputs files pairwise with a local "
              "LM: judge A.json B.json --judge DIR --out DIR"),
    "train": ("emotune.train.recipe:main", "fine-tune a causal LM (EMO, MLE, TaiLr, MixCE) on DeepSpeed ZeRO-3: "
              "train CONFIG [key=value ...]"),
    "synth": ("emotune.launch.synth_cli:main", "write the embedded demo's synthetic data and tokenizer (offline)"),
    "launch": ("emotune.launch.launch_cli:main", "start training on 1 GPU, N GPUs, N nodes (hostfile) or SLURM"),
    "watch": ("emotune.scheduling.scheduler:main", "evaluate every checkpoint of a run as it lands: watch RUN_DIR --suite NAME"),
    "results": ("emotune.report.results:main", "print a run's evaluation results: results RUN_DIR [--json]"),
    "report": ("emotune.report.build:main", "HTML + PNG + Markdown report: report RUN_DIR [RUN_DIR...] --out DIR"),
    "pipeline": ("emotune.launch.pipeline:main", "train, evaluate each checkpoint as it lands, report: pipeline CONFIG"),
}


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: emotune COMMAND [args...]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `emotune COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = take_local_rank(argv)
    except EmotuneError as err:
        print(f"emotune: error: {err}", file=sys.stderr)
        return 2
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from emotune import __version__

        print(f"emotune {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"emotune: error: unknown command {name!r} (commands: {', '.join(COMMANDS)}; see emotune --help)",
              file=sys.stderr)
        return 2
    target, _ = COMMANDS[name]
    module_name, func_name = target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    return run_cli(name, func, rest)


if __name__ == "__main__":
    sys.exit(main())
