"""What the wheel needs: every third-party import of the package is a declared dependency, and the
shipped configs resolve through emotune.resources (the user's own path first)."""

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import tomllib

from emotune.resources import names, resolve, shipped, shipped_root

REPO = Path(__file__).resolve().parents[1]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_modules() -> dict[str, str]:
    found = {}
    for path in sorted((REPO / "emotune").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for mod in mods:
                top = mod.split(".")[0]
                if top != "emotune" and top not in sys.stdlib_module_names:
                    found.setdefault(top, str(path.relative_to(REPO)))
    return found


def test_every_import_is_a_declared_dependency():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    # runtime dependencies, and the extras of optional features (not `test`), which declare what the package
    # imports only when that feature runs (lm_eval: `pip install 'emotune[harness]'`; wandb: report_to: [wandb])
    optional = [d for extra, deps in project.get("optional-dependencies", {}).items() if extra != "test" for d in deps]
    declared = {_canonical(re.split(r"[\s<>=!~;\[]", d, maxsplit=1)[0]) for d in project["dependencies"] + optional}
    dists = packages_distributions()
    undeclared = {}
    for module, where in _imported_modules().items():
        providers = {_canonical(d) for d in dists.get(module, [])}
        assert providers, f"{module} (imported in {where}) is not installed, so no distribution provides it"
        if not providers & declared:
            undeclared[module] = (sorted(providers), where)
    assert not undeclared, f"imported but not in pyproject dependencies: {undeclared}"
    assert {"pandas", "pyarrow", "tqdm"} <= set(_imported_modules())  # the check sees them at all


def test_shipped_files_and_the_resolution_order(tmp_path, monkeypatch):
    root = shipped_root()
    assert (root.parent / "py.typed").is_file() and root.parent.name == "emotune"
    monkeypatch.chdir(tmp_path)  # no source tree here
    tiny = shipped("train/tiny-cpu.yaml")
    for spelling in ("configs/train/tiny-cpu.yaml", "train/tiny-cpu.yaml", "tiny-cpu", "tiny-cpu.yaml"):
        assert resolve(spelling, "train") == tiny, spelling
    assert resolve("zero3-bf16", "deepspeed") == shipped("deepspeed/zero3-bf16.json")
    assert resolve("configs/pipeline/tiny_suite.yaml") == shipped("pipeline/tiny_suite.yaml")
    assert "tiny-cpu" in names("train") and "demo" in names("pipeline")
    # the user's file wins over the shipped one of the same name, in either spelling
    own = tmp_path / "configs" / "train" / "tiny-cpu.yaml"
    own.parent.mkdir(parents=True)
    own.write_text("mine: true\n")
    assert resolve("configs/train/tiny-cpu.yaml", "train") == Path("configs/train/tiny-cpu.yaml")
    (tmp_path / "tiny-cpu").write_text("also mine\n")
    assert resolve("tiny-cpu", "train") == Path("tiny-cpu")
    # nothing of that name: given back unchanged, so the caller's error names what the user typed
    assert resolve("configs/train/nope.yaml", "train") == Path("configs/train/nope.yaml")
    assert resolve("/abs/missing.yaml", "train") == Path("/abs/missing.yaml")


@pytest.mark.parametrize("suite,count", [("paper", 8), ("icl", 7), ("demo", 2)])
def test_suites_load_from_the_shipped_tasks(tmp_path, monkeypatch, suite, count):
    from emotune.tasks.suites import load_suite

    monkeypatch.chdir(tmp_path)
    tasks = load_suite(suite)
    assert len(tasks) == count and all(Path(t.source).is_relative_to(shipped_root()) for t in tasks)
