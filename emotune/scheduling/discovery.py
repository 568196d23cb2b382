"""Find the checkpoints of a run that are safe to evaluate.

The training stage writes `RUN_DIR/checkpoint-STEP/` with the Hugging Face model files, a
`manifest.json` (step, tokens seen, objective, config hash, file hashes) and, last of all, a
`COMPLETE` marker. A checkpoint counts only when the marker and the manifest exist and every file
the manifest lists has the recorded size and SHA-256 (emotune.manifest, shared with the writer): a folder still being written, or one whose
weights were truncated by a full disk, is skipped with a warning and never evaluated.

Hashing a 13 GB checkpoint takes a while, so a verified checkpoint is remembered per process
(keyed by the manifest's and marker's mtimes); the evaluation job verifies once more before it runs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emotune.atomic import read_json, read_yaml
from emotune.errors import EmotuneError
from emotune.manifest import BEST, CHECKPOINT_RE, COMPLETE, MANIFEST, BadCheckpoint, check_files, file_entries, files_digest

log = logging.getLogger("emotune.scheduling.discovery")

@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    fingerprint: str  # identifies the weights: a hash over the manifest's file hashes
    tokens_seen: int | None = None
    objective: str | None = None
    final: bool = False  # the training stage marked this the run's last checkpoint
    manifest: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def model_path(self) -> Path:
        """What an evaluator loads: LoRA checkpoints hold the adapter at the top, the merged model in merged/."""
        merged = self.path / "merged"
        if self.manifest.get("format") == "lora" and (merged / "config.json").is_file():
            return merged
        return self.path


def _is_final(manifest: dict) -> bool:
    if manifest.get("final") or manifest.get("is_final"):
        return True
    max_steps = manifest.get("max_steps")
    return isinstance(max_steps, int) and max_steps > 0 and manifest.get("step", -1) >= max_steps



def read_checkpoint(path: str | os.PathLike, verify_hashes: bool = True) -> Checkpoint:
    """Read and verify one checkpoint folder; raise BadCheckpoint saying what is wrong."""
    path = Path(path)
    m = CHECKPOINT_RE.match(path.name)
    if not m:
        raise BadCheckpoint("folder name is not checkpoint-STEP")
    if not (path / COMPLETE).is_file():
        raise BadCheckpoint(f"no {COMPLETE} marker (still being written, or the writer died)")
    if not (path / MANIFEST).is_file():
        raise BadCheckpoint(f"no {MANIFEST}")
    try:
        manifest = read_json(path / MANIFEST, "manifest")
    except EmotuneError as err:
        raise BadCheckpoint(f"{MANIFEST} is unreadable ({str(err).rsplit(': ', 1)[-1]})") from None
    if not isinstance(manifest, dict):
        raise BadCheckpoint(f"{MANIFEST} is not a JSON object")
    step = manifest.get("step", int(m.group(1)))
    if not isinstance(step, int) or step != int(m.group(1)):
        raise BadCheckpoint(f"manifest step {step!r} does not match the folder name")
    files = file_entries(manifest)
    check_files(path, files, hashes=verify_hashes)
    objective = manifest.get("objective")
    if isinstance(objective, dict):
        objective = objective.get("name")
    tokens = manifest.get("tokens_seen", manifest.get("num_input_tokens_seen"))
    return Checkpoint(path=path, step=step, fingerprint=files_digest(files)[:16],
                      tokens_seen=int(tokens) if isinstance(tokens, (int, float)) else None,
                      objective=objective if isinstance(objective, str) else None,
                      final=_is_final(manifest), manifest=manifest)


class Discovery:
    """Lists a run's good checkpoints; remembers what it verified and what it already warned about."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self._good: dict[Path, tuple[tuple, Checkpoint]] = {}
        self._warned: dict[Path, str] = {}

    @staticmethod
    def _stamp(path: Path) -> tuple:
        out = []
        for name in (COMPLETE, MANIFEST):
            try:
                st = (path / name).stat()
                out.append((st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return tuple(out)

    def scan(self) -> list[Checkpoint]:
        found = []
        try:
            entries = sorted(self.run_dir.iterdir())
        except FileNotFoundError:
            return []
        for path in entries:
            if not path.is_dir() or not CHECKPOINT_RE.match(path.name):
                continue
            stamp = self._stamp(path)
            cached = self._good.get(path)
            if cached and cached[0] == stamp:
                found.append(cached[1])
                continue
            try:
                ckpt = read_checkpoint(path)
            except BadCheckpoint as err:
                self._good.pop(path, None)
                if self._warned.get(path) != str(err):  # warn once per distinct problem
                    log.warning("skipping %s: %s", path, err)
                    self._warned[path] = str(err)
                continue
            self._warned.pop(path, None)
            self._good[path] = (stamp, ckpt)
            found.append(ckpt)
        return sorted(found, key=lambda c: c.step)

    def skipped(self) -> dict[Path, str]:
        """Checkpoint folders skipped on the last scans, with the reason."""
        return dict(self._warned)


def discover(run_dir: str | os.PathLike) -> list[Checkpoint]:
    return Discovery(run_dir).scan()


def read_run_config(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The config the training stage recorded in RUN_DIR/config.yaml (YAML), None when there is none;
    a damaged one is one EmotuneError naming the file."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    cfg = read_yaml(path, "run config")
    if not isinstance(cfg, dict):
        raise EmotuneError(f"run config {path}: not a mapping of keys to values")
    return cfg


def read_best(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run's best checkpoint ({"step", "checkpoint", "metric", "value", ...}), None before the first
    checkpoint with that metric; a damaged record is one EmotuneError naming the file."""
    path = Path(run_dir) / BEST
    if not path.is_file():
        return None
    best = read_json(path, "best-checkpoint record")
    if not isinstance(best, dict) or not isinstance(best.get("step"), int) or isinstance(best.get("step"), bool):
        raise EmotuneError(f"best-checkpoint record {path}: expected a JSON object with an integer \"step\"")
    return best
