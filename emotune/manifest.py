"""The contract between the training stage and everything that reads its checkpoints.

`RUN_DIR/checkpoint-STEP/` holds the Hugging Face model files, a `manifest.json` (step, tokens seen,
objective, config hash, the SHA-256 of every file) and, written last of all, a `COMPLETE` marker. The
training stage (emotune.train.checkpoint) writes this; the scheduler (emotune.scheduling.discovery), its
jobs and the evaluator's resumption keys (emotune.eval.resume) read it. One module for both sides, and
torch-free, so that a scheduler pass or a job start never pays for importing torch.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from emotune.atomic import read_json
from emotune.errors import EmotuneError

COMPLETE = "COMPLETE"
MANIFEST = "manifest.json"
BEST = "best.json"  # the run's best checkpoint, written by the training stage after each export
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


class BadCheckpoint(Exception):
    """A checkpoint folder that must not be read (the message says why)."""


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entries(manifest: dict) -> dict[str, dict[str, Any]]:
    """Normalise the manifest's file list to {relative name: {"sha256": ..., "size": ...}}.

    We write `files: {name: sha256}`; a list of {"path"/"name", "sha256", "size"} records is read too."""
    files = manifest.get("files", manifest.get("file_hashes", manifest.get("sha256")))
    if files is None:
        raise BadCheckpoint("manifest lists no files (expected a 'files' mapping of name -> sha256)")
    out: dict[str, dict[str, Any]] = {}
    if isinstance(files, dict):
        items = files.items()
    elif isinstance(files, list):
        items = [(e.get("path") or e.get("name"), e) for e in files]
    else:
        raise BadCheckpoint("manifest 'files' is neither a mapping nor a list")
    for name, entry in items:
        if not isinstance(name, str) or not name:
            raise BadCheckpoint("manifest has a file entry without a name")
        if isinstance(entry, str):
            entry = {"sha256": entry}
        if not isinstance(entry, dict) or not entry.get("sha256"):
            raise BadCheckpoint(f"manifest entry for {name} has no sha256")
        out[name] = entry
    return out


def check_files(path: Path, files: dict[str, dict[str, Any]], hashes: bool = True) -> None:
    """Every listed file exists with its recorded size; with `hashes`, also its SHA-256 (BadCheckpoint otherwise).

    Sizes first: a truncated file is found without hashing gigabytes."""
    for name, entry in files.items():
        f = path / name
        if not f.is_file():
            raise BadCheckpoint(f"{name} is listed in the manifest but missing")
        size = entry.get("size", entry.get("bytes"))
        if size is not None and f.stat().st_size != size:
            raise BadCheckpoint(f"{name} has {f.stat().st_size} bytes, the manifest says {size} (truncated?)")
    if hashes:
        for name, entry in files.items():
            if sha256_file(path / name) != entry["sha256"]:
                raise BadCheckpoint(f"{name} does not match its manifest hash (SHA-256; corrupt or truncated)")


def files_digest(files: dict[str, dict[str, Any]]) -> str:
    """Identifies the weights: a hash over the listed files' hashes (the same wherever the folder lives)."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{files[name]['sha256']}\n".encode())
    return digest.hexdigest()


def verify_checkpoint(path: str | Path) -> dict:
    """The manifest of a complete checkpoint after checking every file's hash (EmotuneError otherwise)."""
    path = Path(path)
    if not (path / COMPLETE).is_file() or not (path / MANIFEST).is_file():
        raise EmotuneError(f"checkpoint {path} is incomplete (no {COMPLETE} marker or {MANIFEST})")
    manifest = read_json(path / MANIFEST, "checkpoint manifest")
    if not isinstance(manifest, dict):
        raise EmotuneError(f"checkpoint {path}: {MANIFEST} is not a JSON object")
    try:
        check_files(path, file_entries(manifest))
    except BadCheckpoint as err:
        raise EmotuneError(f"checkpoint {path}: {err}") from None
    return manifest
