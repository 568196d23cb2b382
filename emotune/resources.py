"""The files that ship inside the package (`emotune/configs/`): task files, suites, DeepSpeed JSONs,
example run and pipeline configs and their tiny data. Read through `importlib.resources`, so an
installed emotune works from any directory; nothing is looked up in the source tree.

A name is resolved in this order:

1. a file that exists at that path (absolute, or relative to the current directory): the user's
   own file always wins over a shipped one;
2. the shipped file of that name, where the name may be spelled as in the source tree
   (`configs/train/tiny-cpu.yaml`), relative to the shipped folder (`train/tiny-cpu.yaml`), or, for a
   given kind, as a bare name (`tiny-cpu` for kind "train", `zero3-bf16` for kind "deepspeed").

3. a shipped file's old path (`configs/pipeline/...`, which held pipelines, task files and suites
   together until they moved to `configs/pipelines/`, `configs/eval/tasks/` and `configs/eval/suites/`):
   the file's new place, with a one-line notice on stderr naming it. Old paths keep working for one
   release.

When none exists the name comes back unchanged, so the caller's "not found" message names what the
user typed. The shipped configs name their data files and DeepSpeed JSONs in the same `configs/...`
spelling, so those resolve the same way; a suite file's members are relative to the suite file.
"""

from __future__ import annotations

import sys
from importlib.resources import files
from pathlib import Path

# kind -> (folder inside the shipped configs, suffix a bare name gets)
KINDS = {
    "train": ("train", ".yaml"),
    "pipeline": ("pipelines", ".yaml"),
    "suite": ("eval/suites", ".yaml"),
    "deepspeed": ("deepspeed", ".json"),
    "task": ("eval/tasks", ".yaml"),
    "eval": ("eval", ".yaml"),
    "slurm": ("slurm", ""),
}
# Old place -> new place (relative to the shipped configs); the longest matching old place wins.
# TODO(next release): remove, with _moved and its test (tests/test_packaging.py).
MOVED = {
    "pipeline": "pipelines",
    "pipeline/data": "eval/tasks/data",
    "pipeline/tiny_topic.yaml": "eval/tasks/tiny_topic.yaml",
    "pipeline/tiny_instruct.yaml": "eval/tasks/tiny_instruct.yaml",
    "pipeline/tiny_suite.yaml": "eval/suites/tiny_suite.yaml",
    "pipeline/tiny_instruct_suite.yaml": "eval/suites/tiny_instruct_suite.yaml",
}
_noticed: set[str] = set()  # old paths already announced by this process


def shipped_root() -> Path:
    """The shipped configs folder on disk (wheels and source trees both install it as plain files)."""
    root = files("emotune") / "configs"
    path = Path(str(root))
    if not path.is_dir():  # a zip import would give a non-file Traversable; emotune is never zip-safe
        raise RuntimeError(f"emotune's shipped configs are missing ({root}); reinstall emotune")
    return path


def shipped(relative: str | Path) -> Path:
    """A shipped file by its path under `emotune/configs/` (it need not exist; callers check)."""
    return shipped_root() / relative


def _shipped_candidates(spec: Path, kind: str | None) -> list[Path]:
    parts = spec.parts
    if parts and parts[0] == "configs":  # the source-tree spelling of earlier versions and the docs
        parts = parts[1:]
    if not parts:
        return []
    rel = Path(*parts)
    out = [rel]
    if kind in KINDS:
        folder, suffix = KINDS[kind]
        out.append(Path(folder) / rel)
        if suffix and rel.suffix != suffix:
            out.append(Path(folder) / (str(rel) + suffix))
    return out


def _moved(path: Path) -> Path | None:
    """The shipped file an old `.../configs/pipeline/...` path names now (see MOVED), announced once."""
    parts = path.parts
    if parts and parts[0] != "configs" and "configs" not in parts and parts[0] in {p.split("/")[0] for p in MOVED}:
        parts = ("configs", *parts)  # `pipeline/tiny.yaml`: relative to the shipped folder
    starts = [i + 1 for i, p in enumerate(parts) if p == "configs"]
    if not starts:
        return None
    rel = "/".join(parts[starts[-1]:])
    old = max((o for o in MOVED if rel == o or rel.startswith(o + "/")), key=len, default=None)
    if old is None:
        return None
    new = MOVED[old] + rel[len(old):]
    if not (shipped_root() / new).is_file():
        return None
    if str(path) not in _noticed:
        _noticed.add(str(path))
        print(f"emotune: {path} has moved to configs/{new}; the old path works until the next release",
              file=sys.stderr, flush=True)
    return shipped_root() / new


def resolve(spec: str | Path, kind: str | None = None) -> Path:
    """The file `spec` names: the user's own path first, then a shipped file (see the module doc)."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if not path.is_absolute():
        root = shipped_root()
        for rel in _shipped_candidates(path, kind):
            candidate = root / rel
            if candidate.is_file():
                return candidate
    return _moved(path) or path


def names(kind: str) -> list[str]:
    """The shipped files of one kind, by bare name (for error messages and --help)."""
    folder, suffix = KINDS[kind]
    return sorted(p.stem if suffix else p.name for p in (shipped_root() / folder).glob(f"*{suffix}") if p.is_file())
