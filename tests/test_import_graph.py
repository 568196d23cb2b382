"""The package's dependencies point one way: launch -> train / eval / scheduling -> objectives; report -> scheduling;
and no two of our modules import each other, even through a function-level import (test_no_import_cycles).

Read from the source (ast, nothing executed), every import counted, also those inside functions (a lazy
import is still a dependency) and the `emotune.x.y[:func]` strings that importlib resolves (the CLI's
command table). A rule holds for everything a package reaches, transitively
through our own modules (emotune.manifest, emotune.tasks, ...), not only for its direct imports.

The task-kind registry (emotune.tasks.registry) names each kind's evaluator functions as such strings so
that it stays torch-free; the evaluator's emotune.eval.kinds imports them, so they count as its imports.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "emotune"
TRAIN = ("emotune.train",)  # the training stage
STAGES = ("emotune.objectives", "emotune.eval", "emotune.scheduling", "emotune.report", "emotune.launch",
          "emotune.synthetic", *TRAIN)
TOP = ("emotune.__main__", "emotune.cli")  # the command table names every stage's entry (dynamic imports)
HEAVY = ("torch", "transformers", "deepspeed", "datasets")  # what a scheduler pass or job start must not pay for
_DYNAMIC = re.compile(r"^(emotune(?:\.\w+)+)(?::\w+)?$")  # "emotune.eval.cli:main", "emotune.eval.icl.mmlu"
RESOLVED_BY = {"emotune.tasks.registry": "emotune.eval.kinds"}  # whose module-name strings another imports


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(tree: ast.AST, module: str, is_package: bool = False, dynamic: bool = True) -> set[str]:
    """Every module name `tree` imports (top-level names of third-party ones included, e.g. "torch"), and
    the module names its strings hold; `dynamic=False`: not those, `dynamic=None`: only those."""
    package = module if is_package else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if dynamic is None and not isinstance(node, ast.Constant):
            continue
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, `level - 1` packages up
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
        elif dynamic is not False and isinstance(node, ast.Constant) and isinstance(node.value, str):
            m = _DYNAMIC.match(node.value)
            if m:
                out.add(m.group(1))
    return out


@lru_cache(maxsize=None)
def graph() -> dict[str, set[str]]:
    """Our modules -> what each imports, keeping only names that are modules (ours) or third-party roots."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    trees = {name: ast.parse(path.read_text(), str(path)) for name, path in files.items()}
    for name, path in files.items():
        found = imports_of(trees[name], name, path.name == "__init__.py", dynamic=name not in RESOLVED_BY)
        found |= {m for named, by in RESOLVED_BY.items() if by == name for m in imports_of(trees[named], named, dynamic=None)}
        edges[name] = {m for m in found if m in files or not m.startswith("emotune")}
        # importing a.b.c runs a/__init__ and a/b/__init__ too
        edges[name] |= {".".join(m.split(".")[:i]) for m in edges[name] if m in files for i in range(1, m.count(".") + 1)}
    return edges


def reach(module: str, edges=None) -> set[str]:
    """Every module `module` imports, directly or through our own modules (in `edges`, default graph())."""
    edges, seen, todo = graph() if edges is None else edges, set(), [module]
    while todo:
        for dep in edges.get(todo.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def _in(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def members(*prefixes: str) -> list[str]:
    return sorted(m for m in graph() if _in(m, *prefixes))


def _violations(sources: list[str], forbidden) -> list[str]:
    return [f"{m} -> {dep}" for m in sources for dep in sorted(reach(m)) if forbidden(dep)]


def test_the_reader_sees_lazy_relative_and_dynamic_imports():
    src = ("import os.path\nfrom . import sibling\nfrom ..other import thing\n"
           "def f():\n    import torch\n    from emotune.eval import cli\n"
           "COMMANDS = {'x': ('emotune.launch.demo:main', 'help')}\nLOG = 'not a module name'\n")
    got = imports_of(ast.parse(src), "emotune.pkg.mod")
    assert {"os.path", "emotune.pkg", "emotune.pkg.sibling", "emotune.other", "emotune.other.thing", "torch",
            "emotune.eval", "emotune.eval.cli", "emotune.launch.demo"} <= got
    assert "not a module name" not in got
    # the known back-edge of the past would have been found
    assert imports_of(ast.parse("if __name__ == '__main__':\n    from emotune.cli import main\n"),
                      "emotune.train.recipe") >= {"emotune.cli"}


def test_every_package_is_covered():
    for prefix in (*STAGES, "emotune.tasks"):
        assert members(prefix), f"no modules under {prefix}: the rules below would check nothing"
    assert members(*TRAIN)


def test_objectives_import_nothing_of_ours_but_errors():
    bad = _violations(members("emotune.objectives"),
                      lambda d: _in(d, "emotune") and d != "emotune" and not _in(d, "emotune.errors", "emotune.objectives"))
    assert not bad, bad


def test_the_training_stage_never_imports_launch():
    bad = _violations(members(*TRAIN), lambda d: _in(d, "emotune.launch", *TOP))
    assert not bad, bad


def test_scheduling_imports_neither_torch_nor_the_evaluator_nor_the_report():
    bad = _violations(members("emotune.scheduling"),
                      lambda d: _in(d, "emotune.eval", "emotune.launch", *TRAIN, "emotune.objectives", "emotune.report",
                                    *TOP, *HEAVY))
    assert not bad, bad


def test_the_report_reads_the_store_without_torch_or_a_stage():
    """emotune.report may import emotune.scheduling (the store, discovery, records), nothing that runs a model."""
    bad = _violations(members("emotune.report"),
                      lambda d: _in(d, "emotune.eval", "emotune.launch", *TRAIN, "emotune.objectives", *TOP, *HEAVY))
    assert not bad, bad


def test_the_evaluator_never_imports_scheduling_or_launch():
    bad = _violations(members("emotune.eval"),
                      lambda d: _in(d, "emotune.scheduling", "emotune.report", "emotune.launch", *TRAIN, *TOP))
    assert not bad, bad


def test_the_synthetic_language_imports_no_stage():
    """emotune.synthetic sits below the evaluator (its `kind: oracle` task) and `emotune synth`: it imports neither."""
    bad = _violations(members("emotune.synthetic"),
                      lambda d: _in(d, "emotune.eval", "emotune.scheduling", "emotune.report", "emotune.launch", *TRAIN, *TOP))
    assert not bad, bad


def test_shared_modules_import_no_stage():
    """emotune.manifest, emotune.tasks, ... sit below every stage: they import none of them."""
    shared = [m for m in graph() if (m.count(".") == 1 or _in(m, "emotune.tasks")) and m not in TOP and not _in(m, *STAGES)]
    assert "emotune.manifest" in shared and "emotune.tasks" in shared and "emotune.plumbing" in shared
    bad = _violations(shared, lambda d: _in(d, "emotune.eval", "emotune.scheduling", "emotune.report", "emotune.launch",
                                            *TRAIN, *TOP))
    assert not bad, bad


@pytest.mark.parametrize("module", ["emotune.manifest", "emotune.plumbing", "emotune.local_records", *members("emotune.tasks")])
def test_shared_checkpoint_and_task_modules_are_torch_free(module):
    assert not set(HEAVY) & reach(module)


def test_the_registrys_evaluator_names_are_the_evaluators_imports():
    """The registry's "module:function" strings count as emotune.eval.kinds' imports, not the registry's."""
    assert {"emotune.eval.icl.classification", "emotune.eval.icl.mmlu", "emotune.eval.harness"} <= reach("emotune.eval.kinds")
    assert not [m for m in reach("emotune.tasks.registry") if _in(m, "emotune.eval")]


def test_the_task_modules_import_each_other_one_way():
    """No cycle among emotune.tasks' modules, counting imports inside functions too."""
    cycles = [m for m in members("emotune.tasks") if m in reach(m)]
    assert not cycles, cycles


def test_importing_scheduling_or_the_report_loads_no_torch_at_run_time():
    """The same at run time, in a fresh interpreter: nothing (a dependency of a dependency) drags torch in."""
    mods = members("emotune.scheduling", "emotune.report")
    code = ("import importlib, sys\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} or m.startswith('emotune.eval'))\n"
            "print(bad)\nsys.exit(1 if bad else 0)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


# ---------------------------------------------------------------- import cycles

def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"
                                         or isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def statement_imports(tree: ast.AST, module: str, modules: set[str], is_package: bool = False) -> set[str]:
    """Our modules that `tree`'s import statements load, wherever they stand (a function-level import runs too),
    each to the module it names: `from emotune.a import b` is emotune.a.b where that is a module, else emotune.a.

    Not counted, since none is a run-time import of one module by another: what only a type checker reads
    (`if TYPE_CHECKING:`), the `emotune.x:main` strings of the command table (importlib runs them from the
    top of the CLI) and `-m emotune.x` command lines (another process)."""
    package = module if is_package else module.rpartition(".")[0]
    out: set[str] = set()
    todo = [tree]
    while todo:
        node = todo.pop()
        if _type_checking_only(node):
            todo.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            out.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
        todo.extend(ast.iter_child_nodes(node))
    return {m for m in out if m in modules and m != module}


@lru_cache(maxsize=None)
def statement_graph() -> dict[str, frozenset[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: frozenset(statement_imports(ast.parse(path.read_text(), str(path)), name, set(files),
                                              path.name == "__init__.py")) for name, path in files.items()}


def import_cycles(edges: dict[str, frozenset[str]]) -> set[frozenset[str]]:
    """Every set of modules that import each other (directly or round a longer loop): a module with each module
    that it reaches and that reaches it back."""
    reach_of = {m: reach(m, edges) for m in edges}
    return {frozenset({m} | {n for n in reach_of[m] if m in reach_of[n]}) for m in edges if m in reach_of[m]}


def test_the_cycle_finder_sees_function_level_imports_and_skips_type_checking():
    mods = {"emotune.a", "emotune.b", "emotune.c", "emotune.d", "emotune.pkg", "emotune.pkg.mod"}
    src = {"emotune.a": "from emotune.b import f\n",
           "emotune.b": "def g():\n    from emotune import a\n",  # lazy: still a cycle a <-> b
           "emotune.c": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from emotune.d import T\n",
           "emotune.d": "import emotune.c\n",
           "emotune.pkg": "from .mod import x\n",
           "emotune.pkg.mod": "from emotune.pkg import y\n"}  # the package's __init__ imports its module back
    edges = {m: frozenset(statement_imports(ast.parse(code), m, mods, m == "emotune.pkg")) for m, code in src.items()}
    assert edges["emotune.b"] == {"emotune.a"} and edges["emotune.c"] == set()
    assert import_cycles(edges) == {frozenset({"emotune.a", "emotune.b"}), frozenset({"emotune.pkg", "emotune.pkg.mod"})}


def test_no_import_cycles():
    """No two modules import each other, at module level or inside a function: a function-level import that
    breaks an import-time cycle still ties the two modules into one, and the order they load in decides
    whether the program starts."""
    cycles = import_cycles(statement_graph())
    assert not cycles, sorted(sorted(c) for c in cycles)
