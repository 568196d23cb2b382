"""The shell blocks of README.md and docs/*.md, cut into the commands a user would type; the block checks
(`bash -n`, shellcheck) and the sandbox folder tests/test_docs.py runs commands in. Commands that cannot run
here are checked by tests/doc_checks.py.

A command is one logical line of a shell block: backslash continuations joined, comments dropped,
`$ ` prompts of ```console blocks taken off (their other lines are output). Its key, the text with runs of
whitespace made one space, is what tests/test_docs.py classifies, so editing a command in the docs makes
the test ask for it to be classified again.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHELL = ("bash", "sh", "shell", "console")
# Blocks in these languages are not commands; a fence with no language at all is refused (tag it `text`
# for output or a file tree, `bash` for commands), so that no command can hide from the test.
NOT_SHELL = ("python", "yaml", "json", "text", "toml", "jsonl")
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")


@dataclass(frozen=True)
class Block:
    path: str  # relative to the repository
    line: int  # of the opening fence, 1-based
    lang: str
    text: str  # dedented to the fence's indentation


@dataclass(frozen=True)
class Command:
    block: Block
    line: int
    key: str  # the command, whitespace runs as one space

    @property
    def where(self) -> str:
        return f"{self.block.path}:{self.line}"


def doc_files(root: Path = REPO) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def blocks(root: Path = REPO) -> list[Block]:
    out = []
    for path in doc_files(root):
        lines = path.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            m = FENCE.match(lines[i])
            if not m:
                i += 1
                continue
            indent, lang, start = len(m.group(1)), m.group(2).lower(), i
            body = []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
                i += 1
            out.append(Block(str(path.relative_to(root)), start + 1, lang, "\n".join(body) + "\n"))
            i += 1
    return out


def shell_blocks(root: Path = REPO) -> list[Block]:
    return [b for b in blocks(root) if b.lang in SHELL]


def script_text(block: Block) -> str:
    """The block as bash reads it: for ```console, only the `$ ` lines (and their continuations); output
    lines become empty lines, so line numbers stay the doc's."""
    if block.lang != "console":
        return block.text
    keep, cont = [], False
    for line in block.text.splitlines():
        if line.startswith("$ ") or cont:
            keep.append(line[2:] if line.startswith("$ ") and not cont else line)
            cont = line.rstrip().endswith("\\")
        else:
            keep.append("")
    return "\n".join(keep) + "\n"


def _strip_comment(line: str) -> str:
    """The line without a trailing `# comment` (a `#` outside quotes that starts a word)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def commands(block: Block) -> list[Command]:
    out, parts, first = [], [], None
    for n, line in enumerate(script_text(block).splitlines()):
        if not parts and (not line.strip() or line.lstrip().startswith("#")):
            continue
        first = block.line + 1 + n if not parts else first
        cont = line.rstrip().endswith("\\")
        parts.append(_strip_comment(line.rstrip()[:-1] if cont else line))
        if not cont:
            out.append(Command(block, first, " ".join(" ".join(parts).split())))
            parts = []
    return out


def all_commands(root: Path = REPO) -> list[Command]:
    return [c for b in shell_blocks(root) for c in commands(b)]


# ---- checks ---------------------------------------------------------------------------------------------


def bash_n(block: Block) -> str | None:
    """bash's own syntax check of the whole block; the error, or None."""
    proc = subprocess.run(["bash", "-n"], input=script_text(block), capture_output=True, text=True, timeout=30)
    return proc.stderr.strip() or None if proc.returncode else None


def shellcheck(block: Block, exclude: str = "") -> str | None:
    """shellcheck of the whole block as a bash script (a block with its own `#!` line is checked as is)."""
    text = script_text(block)
    if not text.startswith("#!"):
        # A doc block is a list of commands, not a script: SC2148 (no shebang) says nothing about it.
        text = "#!/bin/bash\n" + text
    proc = subprocess.run(["shellcheck", "-f", "gcc", *(["-e", exclude] if exclude else []), "-"], input=text, capture_output=True, text=True, timeout=60)
    return proc.stdout.strip() or proc.stderr.strip() or "shellcheck failed" if proc.returncode else None


def shellcheck_available() -> bool:
    return shutil.which("shellcheck") is not None


def run_bash(command: str, cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def sandbox_env(extra: dict | None = None) -> dict:
    """The environment doc commands run in: offline, this interpreter's bin first, this checkout importable
    (and nothing from the checkout's directory itself: commands run in a temp folder, as an installed user's)."""
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_NO_ADVISORY_WARNINGS="1",
               OMP_NUM_THREADS="1", PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    env.update(extra or {})
    return env


# ---- the sandbox doc commands run in -----------------------------------------------------------------

# What the sandbox's fake SLURM allocation looks like to a command (2 nodes, this one node 0).
SLURM_ENV = {"SLURM_NNODES": "2", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "node-001,node-002",
             "SLURM_JOB_ID": "1", "NODE_RANK": "0"}
HOSTFILE = "node-001 slots=8\nnode-002 slots=8\n"


def make_sandbox(root: Path) -> Path:
    """A folder to check commands in, outside the source tree: the docs' placeholders exist there
    (`CONFIG` and `/runs/cfg.yaml` a small valid run config, `hosts` a 2-node hostfile, `/shared/...` is
    `root/shared/...`), and `bin/scontrol` answers `scontrol show hostnames LIST` as SLURM would."""
    from emotune.resources import resolve

    root.mkdir(parents=True, exist_ok=True)
    config = Path(resolve("configs/train/tiny-cpu.yaml")).read_text()
    for where in ("CONFIG", "runs/cfg.yaml", "shared/runs/cfg.yaml"):
        (root / where).parent.mkdir(parents=True, exist_ok=True)
        (root / where).write_text(config)
    for where in ("hosts", "runs/hosts", "shared/runs/hosts"):
        (root / where).write_text(HOSTFILE)
    (root / "bin").mkdir(exist_ok=True)
    scontrol = root / "bin" / "scontrol"
    scontrol.write_text('#!/bin/bash\n[ "$1 $2" = "show hostnames" ] && tr "," "\\n" <<< "$3"\n')
    scontrol.chmod(0o755)
    return root
