"""Checkpoints: resumable DeepSpeed states and Hugging Face exports with a manifest and a completion marker.

Layout of `output_dir`:

    checkpoint-STEP/          Hugging Face model any tool loads (safetensors + config + tokenizer);
                              LoRA runs: the adapter here, the merged model in checkpoint-STEP/merged/
      manifest.json           step, tokens seen, world size, objective, config hash, sha256 of every file
      COMPLETE                written last (atomically): only then may anything read the checkpoint
    resume/step-STEP/         DeepSpeed ZeRO shards (model + optimizer + scheduler + client state)
      RESUMABLE               written once every rank has saved: step, world size, sha256 of every file
    resume/ledger.json        this run's record of the states it wrote (the same hashes); the trust anchor
    resume/latest             DeepSpeed's pointer (not trusted for resume: we use the RESUMABLE markers)
    best.json                 the best checkpoint so far (metric_for_best_model), also in each manifest

The export is built in `.checkpoint-STEP.tmp` and renamed into place, so a crash never leaves a
half-written `checkpoint-STEP/`; readers (the evaluation scheduler) only trust directories with COMPLETE.
The manifest's format and its verification (`verify_checkpoint`) are emotune.manifest, shared with the readers.

Resume states are unpickled by DeepSpeed (`torch.load(weights_only=False)`), which can run code, so a
state is loaded only after every one of its files matched the hashes that this run recorded in its
ledger when it saved the state (`verify_state`); anything else needs `trust_resume_state=true`.
A resumable state whose export never completed (killed in between) is exported again on resume.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import torch

from emotune.atomic import publish_dir, read_json, write_json
from emotune.atomic import write_text as atomic_write_text
from emotune.errors import EmotuneError
from emotune.manifest import BEST, CHECKPOINT_RE, COMPLETE, MANIFEST, sha256_file
from emotune.train.crashpoint import arm_deepspeed_save, crashpoint

RESUMABLE = "RESUMABLE"
LEDGER = "ledger.json"


# ----------------------------------------------------------------------------------------------
# gathering the full weights (ZeRO-3 partitions them)

def gather_state_dict(module: torch.nn.Module, dtype: torch.dtype | None, rank: int) -> dict[str, torch.Tensor]:
    """The full state dict of `module` on rank 0 (CPU tensors); `{}` on the other ranks.

    Every rank must call it: each ZeRO-3 parameter is gathered in turn (one at a time, so peak
    memory is one parameter beyond the CPU copy being built on rank 0).
    """
    import deepspeed

    out: dict[str, torch.Tensor] = {}
    params = dict(module.named_parameters())
    for name, p in params.items():
        ctx = deepspeed.zero.GatheredParameters([p], modifier_rank=None) if hasattr(p, "ds_id") else _null()
        with ctx:
            if rank == 0:
                t = p.detach()
                out[name] = (t.to(dtype) if dtype is not None and t.is_floating_point() else t).cpu().clone()
    if rank == 0:  # persistent buffers (ZeRO never partitions buffers)
        for name, buf in module.named_buffers():
            if name in params:
                continue
            owner, _, leaf = name.rpartition(".")
            mod = module.get_submodule(owner) if owner else module
            if leaf not in getattr(mod, "_non_persistent_buffers_set", set()):
                out[name] = buf.detach().cpu().clone()
    return out


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def merge_lora(state: dict[str, torch.Tensor], scaling: float, adapter: str = "default") -> dict[str, torch.Tensor]:
    """Fold LoRA into the base weights of a peft state dict: W + scaling * B @ A, plain HF key names."""
    merged: dict[str, torch.Tensor] = {}
    prefix = "base_model.model."
    for key, value in state.items():
        if ".lora_" in key:
            continue
        name = key[len(prefix):] if key.startswith(prefix) else key
        name = name.replace(".base_layer.", ".")
        base = key.rsplit(".base_layer.", 1)
        if len(base) == 2 and base[1] == "weight":
            a = state[f"{base[0]}.lora_A.{adapter}.weight"].float()
            b = state[f"{base[0]}.lora_B.{adapter}.weight"].float()
            value = (value.float() + scaling * (b @ a)).to(value.dtype)
        merged[name] = value
    return merged


# ----------------------------------------------------------------------------------------------
# Hugging Face export

def export_checkpoint(model, tokenizer, output_dir: Path, step: int, manifest: dict, rank: int, barrier,
                      dtype: torch.dtype | None, lora_cfg=None) -> Path | None:
    """Write `checkpoint-STEP/` (all ranks call it; rank 0 writes). Returns its path on rank 0."""
    state = gather_state_dict(model, dtype, rank)
    final = output_dir / f"checkpoint-{step}"
    if rank == 0:
        tmp = output_dir / f".checkpoint-{step}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        is_peft = hasattr(model, "peft_config")
        if is_peft:
            # The adapter (peft format) at the top, the merged full model beside it.
            adapter_state = {k: v for k, v in state.items() if "lora_" in k}
            model.save_pretrained(str(tmp), state_dict=adapter_state, safe_serialization=True)
            if lora_cfg is None or lora_cfg.export_merged:
                cfg = model.peft_config["default"]
                scaling = cfg.lora_alpha / (cfg.r ** 0.5 if getattr(cfg, "use_rslora", False) else cfg.r)
                base = model.get_base_model()
                base.save_pretrained(str(tmp / "merged"), state_dict=merge_lora(state, scaling), safe_serialization=True)
                tokenizer.save_pretrained(str(tmp / "merged"))
        else:
            model.save_pretrained(str(tmp), state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        crashpoint("export_tmp", step, rank)
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = dict(manifest, step=step, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        format="lora" if is_peft else "full",
                        files={str(p.relative_to(tmp)): sha256_file(p) for p in files})
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
        publish_dir(tmp, final)  # replaces an earlier, interrupted export of the same step
        crashpoint("export_before_complete", step, rank)
        atomic_write_text(final / COMPLETE, f"{step}\n")
    barrier()
    return final if rank == 0 else None


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Exported checkpoints whose marker and manifest exist, by step."""
    found = []
    for p in Path(output_dir).glob("checkpoint-*"):
        m = CHECKPOINT_RE.match(p.name)
        if m and (p / COMPLETE).is_file() and (p / MANIFEST).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def export_complete(output_dir: Path, step: int) -> bool:
    """checkpoint-STEP exists with its COMPLETE marker and a manifest of that step."""
    d = Path(output_dir) / f"checkpoint-{step}"
    if not (d / COMPLETE).is_file():
        return False
    try:
        manifest = read_json(d / MANIFEST)
    except EmotuneError:
        return False
    return isinstance(manifest, dict) and manifest.get("step") == step


def write_best(output_dir: Path, best: dict | None) -> None:
    if best is not None:
        write_json(Path(output_dir) / BEST, best)


# ----------------------------------------------------------------------------------------------
# resumable DeepSpeed states: hashed when saved, verified before DeepSpeed unpickles them

def resume_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "resume"


def _all_gather(obj) -> list:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def hash_state(state: Path, rank: int) -> dict[str, str | None]:
    """sha256 of every file of a state (RESUMABLE aside), shared out over the ranks; every rank calls it.

    Needs the checkpoint folder on a file system every rank sees (as DeepSpeed's own resume does).
    A file that vanished while hashing gets None (it then matches no recorded hash)."""
    names = sorted(str(p.relative_to(state)) for p in Path(state).rglob("*") if p.is_file() and p.name != RESUMABLE)
    gathered = _all_gather(names)
    names, world = gathered[0], len(gathered)  # rank 0's listing: every rank hashes its share of the same list
    mine = {}
    for name in names[rank::world]:
        try:
            mine[name] = sha256_file(Path(state) / name)
        except OSError:
            mine[name] = None
    out: dict[str, str | None] = {}
    for part in _all_gather(mine):
        out.update(part)
    return out


def read_ledger(output_dir: Path) -> dict:
    path = resume_dir(output_dir) / LEDGER
    if not path.is_file():
        return {}
    ledger = read_json(path, "resume ledger")
    if not isinstance(ledger, dict):
        raise EmotuneError(f"resume ledger {path} is not a JSON object (damaged?)")
    return ledger


def record_state(output_dir: Path, state: Path, step: int, world_size: int | None, rank: int) -> dict:
    """Hash every file of a state just saved, record it in this run's ledger, then write RESUMABLE.
    Every rank calls it (the hashing is shared out); rank 0 writes."""
    files = hash_state(state, rank)
    crashpoint("before_resumable", step, rank)
    record = {"step": step, "world_size": world_size, "files": files}
    if rank == 0:
        ledger = read_ledger(output_dir)
        ledger[state.name] = record
        write_json(resume_dir(output_dir) / LEDGER, ledger)  # the trust record first, then the marker that makes it count
        write_json(state / RESUMABLE, record)
    return record


def save_resumable(engine, output_dir: Path, step: int, client_state: dict, rank: int, barrier, keep: int | None) -> None:
    root = resume_dir(output_dir)
    tag = f"step-{step}"
    arm_deepspeed_save(engine, step, rank)
    engine.save_checkpoint(str(root), tag=tag, client_state=client_state)
    barrier()  # every rank's shards are on disk
    record_state(output_dir, root / tag, step, client_state.get("world_size"), rank)
    crashpoint("after_resumable", step, rank)
    if rank == 0 and keep:
        ledger = read_ledger(output_dir)
        for old in resumable_states(output_dir)[:-keep]:
            old_step = int(old.name.split("-")[1])
            if not export_complete(output_dir, old_step):
                continue  # still needed to export that step again
            (old / RESUMABLE).unlink(missing_ok=True)  # no longer a state, even if the removal is cut short
            shutil.rmtree(old, ignore_errors=True)
            ledger.pop(old.name, None)
        write_json(root / LEDGER, ledger)
    barrier()


def resumable_states(output_dir: Path) -> list[Path]:
    found = []
    root = resume_dir(output_dir)
    for p in root.glob("step-*") if root.is_dir() else []:
        m = re.fullmatch(r"step-(\d+)", p.name)
        if m and (p / RESUMABLE).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def state_step(state: Path) -> int:
    return int(Path(state).name.split("-")[-1])


def clean_partial(output_dir: Path) -> list[Path]:
    """Rank 0, before training: remove what a killed run left half-written (export temp folders,
    resume states without RESUMABLE, atomic-write temp files) and ledger entries of states that are gone."""
    out, root = Path(output_dir), resume_dir(output_dir)
    removed = []
    for d in list(out.glob(".checkpoint-*.tmp")) + list(out.glob(".tokenizer.tmp")) + \
            [p for p in (root.glob("step-*") if root.is_dir() else []) if p.is_dir() and not (p / RESUMABLE).is_file()]:
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    for folder in (out, root):
        for f in folder.glob(".*.tmp") if folder.is_dir() else []:
            if f.is_file():
                f.unlink(missing_ok=True)
                removed.append(f)
    if (root / LEDGER).is_file():
        ledger = read_ledger(out)
        kept = {tag: rec for tag, rec in ledger.items() if (root / tag / RESUMABLE).is_file()}
        if kept != ledger:
            write_json(root / LEDGER, kept)
    return removed


def verify_state(state: Path, output_dir: Path, rank: int, trust: bool = False) -> str | None:
    """None when `state` may be given to DeepSpeed, else why not (one line). Every rank calls it.

    Without `trust`: the state must be in this run's resume folder, its marker must equal the record
    in this run's ledger, and every file must match the hash recorded there (no file more, none less).
    With `trust` (the user vouches for a state this run did not write): the marker's own hashes, if any."""
    state = Path(state)
    try:
        marker = read_json(state / RESUMABLE, "resumable marker")
    except EmotuneError as err:
        return str(err)
    if not isinstance(marker, dict):
        return f"{state / RESUMABLE} is not a JSON object"
    if trust:
        expected = marker.get("files")
        if not isinstance(expected, dict):
            return None
    else:
        own = state.parent.resolve() == resume_dir(output_dir).resolve()
        ledger_path = resume_dir(output_dir) / LEDGER
        entry = read_ledger(output_dir).get(state.name) if own else None
        if entry is None:
            return f"{state} was not written by this run (no record of it in {ledger_path})"
        if entry != marker or not isinstance(entry.get("files"), dict):
            return f"{state / RESUMABLE} differs from the record of it in {ledger_path}"
        expected = entry["files"]
    actual = hash_state(state, rank)
    for name in sorted(set(expected) | set(actual)):
        if name not in actual:
            return f"{state}: {name} is missing"
        if name not in expected:
            return f"{state}: {name} was not there when the state was saved"
        if actual[name] != expected[name]:
            return f"{state}: {name} does not match the hash recorded when it was saved (truncated or modified)"
    return None


def locate_state(spec: str) -> Path:
    """A path given as resume_from_checkpoint: a `resume/step-N` folder, or a run folder (its newest state)."""
    p = Path(spec)
    if (p / RESUMABLE).is_file():
        return p
    states = resumable_states(p) if p.is_dir() else []
    if not states:
        raise EmotuneError(f"resume_from_checkpoint: {spec} is not a complete resumable state (no {RESUMABLE} marker found)")
    return states[-1]


TRUST_HINT = "DeepSpeed unpickles resume states, which can run code: pass trust_resume_state=true only for a state you trust"


def plan_resume(output_dir: Path, spec: str | None, rank: int, trust: bool = False) -> tuple[Path | None, list[Path], str | None]:
    """(the state to resume from, the verified states whose export must be written again (by step,
    the chosen one included when its own export is missing), a one-line note when a newer state was
    passed over). Every rank calls it (the hashing is shared out)."""
    if spec is None or str(spec).lower() in ("none", "false", ""):
        return None, [], None
    out = Path(output_dir)
    note = None
    if str(spec).lower() in ("latest", "true", "auto"):
        candidates = resumable_states(out)
        if not candidates:
            return None, [], None
        bad: list[tuple[Path, str]] = []
        chosen = None
        for st in reversed(candidates):
            why = verify_state(st, out, rank, trust)
            if why is None:
                chosen = st
                break
            bad.append((st, why))
        if chosen is None:
            raise EmotuneError(f"resume: no resumable state in {resume_dir(out)} passes verification ({bad[0][1]}); "
                               f"remove {resume_dir(out)} to start over, or: {TRUST_HINT}")
        if bad:
            names = ", ".join(st.name for st, _ in bad)
            note = f"resume: passing over {names} ({bad[0][1]}); resuming from {chosen.name}, the newest state that verifies"
    else:
        chosen = locate_state(spec)
        why = verify_state(chosen, out, rank, trust)
        if why is not None:
            raise EmotuneError(f"resume_from_checkpoint: {why}; {TRUST_HINT}")
    reexport = []
    for st in resumable_states(out) if chosen.parent.resolve() == resume_dir(out).resolve() else [chosen]:
        step = state_step(st)
        if step > state_step(chosen) or export_complete(out, step):
            continue
        if st == chosen or verify_state(st, out, rank, trust) is None:
            reexport.append(st)
    return chosen, reexport, note
