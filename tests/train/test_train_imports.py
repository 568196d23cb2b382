"""Dependencies point one way: emotune/train imports objectives (and the shared top-level modules), never
launch (nor the command table, emotune/cli.py), eval, scheduling or the report; emotune/objectives imports nothing of ours but errors."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "emotune"


def _imports(folder: str) -> dict[str, set[str]]:
    found = {}
    for path in PACKAGE.joinpath(folder).glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[path.name] = {n for n in names if n == "emotune" or n.startswith("emotune.")}
    return found


def test_train_never_imports_launch_eval_or_scheduling():
    bad = {f: sorted(n for n in names if n.split(".")[1:2] and n.split(".")[1] in ("launch", "cli", "eval", "scheduling", "report"))
           for f, names in _imports("train").items()}
    assert not {f: n for f, n in bad.items() if n}, bad


def test_objectives_import_only_objectives_and_errors():
    bad = {f: sorted(n for n in names if not (n.startswith("emotune.objectives") or n == "emotune.errors"))
           for f, names in _imports("objectives").items()}
    assert not {f: n for f, n in bad.items() if n}, bad
