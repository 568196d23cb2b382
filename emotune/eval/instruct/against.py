"""`emotune eval --against OTHER --judge J`: what the instruct tasks' responses are compared with.

OTHER is another checkpoint (its responses are made with the same settings, into
DIR/against/<name>-<weights hash>/, an evaluation folder of its own with a summary.json), an outputs file
in AlpacaEval's format, or `reference` (the task's own reference responses). A checkpoint's responses are
keyed like every result of `emotune eval` (emotune.eval.resume: the weights' fingerprint, the dtype, the
task definition and the options that change responses): a later run reuses them only under the same key,
so another opponent or another checkpoint of the same name gets its own folder and its own responses, and
other settings are refused in one line (or made again with resume=false). Everything that can be checked
without a model is checked before the evaluated model loads: the judge's folder (tokenizer and weights),
the format, the outputs file (every record), that both sides hold the same instructions, and whether the
opponent's stored responses can be reused.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emotune.errors import EmotuneError
from emotune.eval.instruct.outputs import align, read_outputs
from emotune.eval.instruct.pairwise import check_judge, compare, load_judge, result_name, write_result
from emotune.eval.instruct.stats import table
from emotune.tasks.registry import kind_of
from emotune.tasks.task import Task


@dataclass
class Against:
    kind: str  # "reference" | "file" | "model"
    source: str
    judge: str
    fmt: str
    model_name: str
    tasks: list[Task]
    opts: dict[str, Any]
    folder: Path | None = None  # kind "model": where its responses live (under DIR/against/)
    keys: dict[str, dict] = field(default_factory=dict)  # kind "model": each task's result key
    reuse: set[str] = field(default_factory=set)  # kind "model": tasks whose stored responses have that key

    def _other(self, task: Task, out_dir: Path) -> list[dict]:
        from emotune.eval.instruct.task import load_instructions, reference_outputs

        if self.kind == "reference":
            return reference_outputs(task, load_instructions(task, self.opts["data_dir"], self.opts["limit"]))
        if self.kind == "file":
            return read_outputs(self.source)
        if task.name not in self.reuse:
            self._respond(task)
        return read_outputs(self.folder / f"{task.name}.outputs.json")

    def _respond(self, task: Task) -> None:
        """The opponent checkpoint's responses, recorded with their key in the folder's summary.json."""
        from emotune.eval.instruct.task import run_instruct_task
        from emotune.eval.lm import load_causal_lm
        from emotune.eval.summary import write_summary

        print(f"[eval] {task.name}: responses of --against {self.source} -> {self.folder} ...", flush=True)
        model, tok = load_causal_lm(self.source, "--against", self.opts["dtype"], self.opts["device"],
                                    self.opts["trust_remote_code"])
        result = run_instruct_task(task, model, tok, self.folder, **self.opts)
        del model
        result.settings["resume_key"] = self.keys[task.name]
        results = _stored(self.folder)
        results[task.name] = result
        write_summary(self.folder, self.source, "against", list(results.values()))

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
            path = write_result(out_dir / result_name(task.name, self.judge, self.fmt, self.source), result)
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
    instruct = [t for t in tasks if kind_of(t.kind, t.source).judged]
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
        return Against(kind, source, str(args.judge), args.judge_format or "plain", str(args.model), instruct, opts)
    else:
        kind = "model"
        resolve(source, "--against", need_tokenizer=True, need_weights=True)
    against = Against(kind, source, str(args.judge), args.judge_format or "plain", str(args.model), instruct, opts)
    if kind == "model":
        _key_opponent(against, Path(args.out))
    return against


def _stored(folder: Path) -> dict:
    """The task results in an opponent folder's summary.json (none yet: empty)."""
    from emotune.eval.summary import TaskResult, read_summary

    path = folder / "summary.json"
    if not path.exists():
        return {}
    try:
        return {name: TaskResult(**r) for name, r in read_summary(path)["tasks"].items()}
    except (KeyError, TypeError, AttributeError, ValueError):
        raise EmotuneError(f"{path}: not a valid summary; move it away or pass resume=false") from None


def _key_opponent(against: Against, out_dir: Path) -> None:
    """The opponent's folder (named by the checkpoint and its weights' fingerprint), each task's key, and which
    stored responses carry that key; stored ones with another key are refused (resume=false makes them again)."""
    from emotune.eval.lm import resolve_dtype
    from emotune.eval.resume import check_reusable, model_fingerprint, result_key

    fp = model_fingerprint(against.source)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(against.source.rstrip("/")).name)[:60] or "model"
    against.folder = out_dir / "against" / f"{name}-{hashlib.sha256(fp.encode()).hexdigest()[:10]}"
    dtype = str(resolve_dtype(str(against.opts["dtype"]), against.opts["device"] or "cpu")).replace("torch.", "")
    stored = _stored(against.folder) if against.opts.get("resume", True) else {}
    for task in against.tasks:
        against.keys[task.name] = key = result_key(task, against.opts, fp, dtype)
        old = stored.get(task.name)
        if old is None or not (against.folder / str(old.predictions)).is_file():
            continue
        check_reusable(against.folder / "summary.json", task.name, old.settings or {}, key)
        against.reuse.add(task.name)
        print(f"[eval] {task.name}: responses of --against {against.source} already in {against.folder} "
              "with the same settings, reused", flush=True)
