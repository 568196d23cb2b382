"""When `emotune eval` may reuse a result already in `--out`: only one made with the same settings.

Every task result records a `resume_key` in its settings: what the numbers depend on — the model's
weights (a fingerprint), the task definition (a hash of the task file's content, so edited templates
count), the dtype the model ran in, and per kind the options that change results (scoring, encoder,
round trip, ice_num, limit, ...: its registry entry's result_fields and result_options,
emotune.tasks.registry). Options that change only speed (batch sizes, shared_prefix, device,
progress, cache folders) are not part of it. Re-running into the same folder skips a task whose key is
equal and refuses, in one line naming the first setting that differs, when it is not.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from emotune.errors import EmotuneError
from emotune.manifest import BadCheckpoint, file_entries, sha256_file
from emotune.tasks.registry import kind_of


def _digest(items: list[tuple[str, str]]) -> str:
    h = hashlib.sha256()
    for name, value in sorted(items):
        h.update(f"{name}\0{value}\n".encode())
    return h.hexdigest()[:24]


# what transformers loads from a model folder: weights, configs, tokenizer files, remote code, templates
_MODEL_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt", ".tiktoken", ".py", ".jinja")
# ... but not an evaluation's own outputs (`--out` may be the model folder) nor Trainer state
_NOT_MODEL = {"summary.json", "results.json", "job-result.json", "training_args.bin", "trainer_state.json"}


def _model_file(f: Path) -> bool:
    return f.suffix in _MODEL_SUFFIXES and f.name not in _NOT_MODEL


def model_fingerprint(model: str) -> str:
    """What identifies the weights behind `--model`.

    An emotune checkpoint: a hash over its manifest's file hashes (the same weights give the same value
    wherever the folder lives). Another local folder: a hash over the contents of its top-level model files
    (weights, configs, tokenizer; a Hugging Face model folder is flat, and evaluation outputs or optimizer
    states there do not count). A hub id: the
    cached snapshot's commit where there is one, else the id.
    """
    path = Path(model)
    if path.is_dir():
        manifest = path / "manifest.json"
        if manifest.is_file():
            try:
                entries = file_entries(json.loads(manifest.read_text()))
                return "manifest:" + _digest([(n, e["sha256"]) for n, e in entries.items()])
            except (OSError, ValueError, BadCheckpoint):
                pass  # not an emotune manifest: hash the files
        try:
            files = [(f.name, sha256_file(f)) for f in sorted(path.iterdir()) if f.is_file() and _model_file(f)]
        except OSError as err:
            raise EmotuneError(f"--model {model}: cannot read its files ({err.strerror})") from None
        return "sha256:" + _digest(files)
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(model, "config.json")
        if isinstance(hit, str):
            return f"hub:{model}@{Path(hit).parent.name}"  # .../snapshots/<commit>/config.json
    except Exception:  # noqa: BLE001 - not a valid repo id, no cache: the id is all there is
        pass
    return f"hub:{model}"


def task_digest(task) -> str:
    """A hash of the task definition as read (templates, splits, columns, ice_num, options ...)."""
    text = json.dumps(task.definition, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _normalise(key: str, value: Any) -> Any:
    if key == "encoder":
        from emotune.eval.icl.retriever import DEFAULT_ENCODER, PAPER_ENCODER

        if value in (None, "", "default", DEFAULT_ENCODER, "sentence-transformers/all-MiniLM-L6-v2"):
            return DEFAULT_ENCODER
        return PAPER_ENCODER if value in ("all-mpnet-base-v2", "mpnet") else str(value)
    if key == "data_dir" and value is not None:
        return str(Path(value).resolve())
    return value


def result_key(task, opts: dict[str, Any], model_fp: str, dtype: str) -> dict[str, Any]:
    """The settings a result of `task` depends on, as `emotune eval` will run it."""
    entry = kind_of(task.kind, task.source)
    key: dict[str, Any] = {"model": model_fp, "dtype": dtype, "kind": task.kind}
    for name in entry.result_fields:
        key[name] = getattr(task, name)
    if entry.fits_prompts:  # how a prompt past max_seq_len is fitted (the rule's version)
        from emotune.eval.icl.fit import FIT_RULE

        key["prompt_fit"] = FIT_RULE
    for name in entry.result_options:
        value = opts.get(name)
        if name == "scoring":
            value = value or task.options.get("scoring", "full")
        key[name] = _normalise(name, value)
    key["task_definition"] = task_digest(task)
    return key


def first_difference(old: dict[str, Any], new: dict[str, Any]) -> tuple[str, Any, Any] | None:
    for name in [*new, *(k for k in old if k not in new)]:
        if old.get(name) != new.get(name):
            return name, old.get(name), new.get(name)
    return None


def check_reusable(summary_path: Path, task_name: str, old_settings: dict[str, Any], new_key: dict[str, Any]) -> None:
    """Return if the stored result of `task_name` was made with `new_key`; else one-line EmotuneError."""
    hint = "use another --out, or resume=false to evaluate again there (replacing it)"
    old_key = old_settings.get("resume_key")
    if not isinstance(old_key, dict):
        raise EmotuneError(f"{summary_path}: task {task_name!r} there records no settings to compare "
                           f"(written by an older emotune); {hint}")
    diff = first_difference(old_key, new_key)
    if diff is not None:
        name, was, now = diff
        raise EmotuneError(f"{summary_path}: task {task_name!r} there was evaluated with {name}={was!r}, "
                           f"this run has {name}={now!r}; {hint}")
