"""Checkpoints: resumable DeepSpeed states and Hugging Face exports with a manifest and a completion marker.

Layout of `output_dir`:

    checkpoint-STEP/          Hugging Face model any tool loads (safetensors + config + tokenizer);
                              LoRA runs: the adapter here, the merged model in checkpoint-STEP/merged/
      manifest.json           step, tokens seen, world size, objective, config hash, sha256 of every file
      COMPLETE                written last (atomically): only then may anything read the checkpoint
    resume/step-STEP/         DeepSpeed ZeRO shards (model + optimizer + scheduler + client state)
      RESUMABLE               written once every rank has saved; the last `save_total_limit` are kept
    resume/latest             DeepSpeed's pointer (not trusted for resume: we use the RESUMABLE markers)

The export is built in `.checkpoint-STEP.tmp` and renamed into place, so a crash never leaves a
half-written `checkpoint-STEP/`; readers (the evaluation scheduler) only trust directories with COMPLETE.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

import torch

from emotune.atomic import write_text as atomic_write_text
from emotune.errors import EmotuneError

COMPLETE = "COMPLETE"
RESUMABLE = "RESUMABLE"
MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = dict(manifest, step=step, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        format="lora" if is_peft else "full",
                        files={str(p.relative_to(tmp)): sha256_file(p) for p in files})
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
        if final.exists():  # an earlier, interrupted export of the same step
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_text(final / COMPLETE, f"{step}\n")
    barrier()
    return final if rank == 0 else None


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Exported checkpoints whose marker and manifest exist, by step."""
    found = []
    for p in Path(output_dir).glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and (p / COMPLETE).is_file() and (p / MANIFEST).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def verify_checkpoint(path: Path) -> dict:
    """The manifest of a complete checkpoint after checking every file's hash (EmotuneError otherwise)."""
    path = Path(path)
    if not (path / COMPLETE).is_file() or not (path / MANIFEST).is_file():
        raise EmotuneError(f"checkpoint {path} is incomplete (no {COMPLETE} marker or {MANIFEST})")
    manifest = json.loads((path / MANIFEST).read_text())
    for name, digest in manifest["files"].items():
        f = path / name
        if not f.is_file() or sha256_file(f) != digest:
            raise EmotuneError(f"checkpoint {path}: file {name} is missing or does not match its manifest hash")
    return manifest


# ----------------------------------------------------------------------------------------------
# resumable DeepSpeed states

def resume_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "resume"


def save_resumable(engine, output_dir: Path, step: int, client_state: dict, rank: int, barrier, keep: int | None) -> None:
    root = resume_dir(output_dir)
    tag = f"step-{step}"
    engine.save_checkpoint(str(root), tag=tag, client_state=client_state)
    barrier()  # every rank's shards are on disk
    if rank == 0:
        atomic_write_text(root / tag / RESUMABLE, json.dumps({"step": step, "world_size": client_state.get("world_size")}))
        if keep:
            for old in resumable_states(output_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    barrier()


def resumable_states(output_dir: Path) -> list[Path]:
    found = []
    root = resume_dir(output_dir)
    for p in root.glob("step-*") if root.is_dir() else []:
        m = re.fullmatch(r"step-(\d+)", p.name)
        if m and (p / RESUMABLE).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def find_resume(output_dir: Path, spec: str | None) -> Path | None:
    """`latest` -> the newest complete resumable state of this run (None if there is none yet);
    a path -> that state (a `resume/step-N` directory or a run directory)."""
    if spec is None or str(spec).lower() in ("none", "false", ""):
        return None
    if str(spec).lower() in ("latest", "true", "auto"):
        states = resumable_states(output_dir)
        return states[-1] if states else None
    p = Path(spec)
    if (p / RESUMABLE).is_file():
        return p
    states = resumable_states(p) if p.is_dir() else []
    if states:
        return states[-1]
    raise EmotuneError(f"resume_from_checkpoint: {spec} is not a complete resumable state (no {RESUMABLE} marker found)")
