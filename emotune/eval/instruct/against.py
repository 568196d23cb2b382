"""`emotune eval --against OTHER --judge J`: what the instruct tasks' responses are compared with.

OTHER is another checkpoint (its responses are made with the same settings, into DIR/against/), an
outputs file in AlpacaEval's format, or `reference` (the task's own reference responses). Everything
that can be checked without a model is checked before the evaluated model loads: the judge's folder
(tokenizer and weights), the format, the outputs file (every record) and that both sides hold the same
instructions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emotune.errors import EmotuneError
from emotune.eval.instruct.outputs import align, read_outputs
from emotune.eval.instruct.pairwise import check_judge, compare, load_judge, result_name, write_result
from emotune.eval.instruct.stats import table
from emotune.tasks import Task


@dataclass
class Against:
    kind: str  # "reference" | "file" | "model"
    source: str
    judge: str
    fmt: str
    model_name: str
    tasks: list[Task]
    opts: dict[str, Any]

    def _other(self, task: Task, out_dir: Path) -> list[dict]:
        from emotune.eval.instruct.task import load_instructions, reference_outputs

        if self.kind == "reference":
            return reference_outputs(task, load_instructions(task, self.opts["data_dir"], self.opts["limit"]))
        if self.kind == "file":
            return read_outputs(self.source)
        path = out_dir / "against" / f"{task.name}.outputs.json"
        if not path.exists():
            from emotune.eval.instruct.task import run_instruct_task
            from emotune.eval.lm import load_causal_lm

            print(f"[eval] {task.name}: responses of --against {self.source} ...", flush=True)
            model, tok = load_causal_lm(self.source, "--against", self.opts["dtype"], self.opts["device"],
                                        self.opts["trust_remote_code"])
            run_instruct_task(task, model, tok, out_dir / "against", **self.opts)
            del model
        return read_outputs(path)

    def run(self, out_dir: Path, results: dict) -> list[dict[str, Any]]:
        loaded = load_judge(self.judge, self.opts)
        done = []
        for task in self.tasks:
            mine = read_outputs(out_dir / results[task.name].predictions)
            other = self._other(task, out_dir)
            print(f"[eval] {task.name}: judging {len(mine)} pairs in both orders with {self.judge} "
                  f"({self.fmt}) ...", flush=True)
            result = compare(mine, other, self.model_name, self.source, self.judge, self.fmt, self.opts, loaded)
            result["task"] = task.name
            path = write_result(out_dir / result_name(task.name, self.judge, self.fmt), result)
            print(table(result))
            print(f"[eval] pairwise result: {path}")
            done.append(result)
        return done


def prepare_against(args, tasks: list[Task], opts: dict[str, Any]) -> Against:
    """Every check that needs no model (see the module docstring)."""
    from emotune.eval.instruct.task import _record, load_instructions, spec_of
    from emotune.hub import resolve

    if not args.against:
        raise EmotuneError("--judge / --judge-format need --against OTHER (a checkpoint, an outputs JSON or "
                           "`reference`)")
    check_judge(args.judge, args.judge_format)
    instruct = [t for t in tasks if t.kind == "instruct"]
    if not instruct:
        raise EmotuneError("--against compares instruction-following responses: give an instruct task "
                           "(--suite instruct)")
    source = str(args.against)
    if source == "reference":
        kind = "reference"
    elif Path(source).is_file():
        kind = "file"
        other = read_outputs(source)
        for task in instruct:  # the same instructions on both sides, checked before any model loads
            spec = spec_of(task)
            rows = load_instructions(task, opts["data_dir"], opts["limit"])
            mine = [_record(spec, r, "", "") for r in rows]
            align(mine, other, f"task {task.name}", source)
    else:
        kind = "model"
        resolve(source, "--against", need_tokenizer=True, need_weights=True)
    return Against(kind, source, str(args.judge), args.judge_format or "plain", str(args.model), instruct, opts)
