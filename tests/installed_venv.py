"""emotune as users get it: a wheel built from a copy of the source in a temp dir, installed (not editable)
into a fresh venv, commands run from an empty directory with no source tree anywhere on the path.

The venv reuses this test venv's third-party packages through a .pth file (no downloads, nothing
installed twice); emotune itself comes only from the wheel.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def install_wheel(root: Path):
    """Build + install the wheel under `root`; returns `run(*argv)` executing in `root/empty` with the venv first on PATH."""
    root = Path(root)
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "LOCAL_RANK")}
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "emotune", src / "emotune", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", "-w", str(root / "dist"), str(src)], capture_output=True, text=True, timeout=300, env=clean)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next((root / "dist").glob("emotune-*.whl"))

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # Third-party packages from the test venv, after the new venv's own site-packages.
    (Path(purelib) / "_test_venv_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # --ignore-installed: the test venv's own (editable) emotune is visible through the .pth
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--ignore-installed",
                              "--no-build-isolation", "--no-index", "-q", str(wheel)],
                             capture_output=True, text=True, timeout=300, env=clean)
    assert install.returncode == 0, install.stderr[-3000:]

    work = root / "empty"
    work.mkdir()
    env = dict(clean)
    env.update(PATH=f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", EMOTUNE_CACHE=str(root / "cache"))

    def run(*args: str, timeout: int = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), cwd=cwd or work, env=env, capture_output=True, text=True, timeout=timeout)

    run.venv, run.work, run.root, run.purelib = venv, work, root, Path(purelib)
    return run
