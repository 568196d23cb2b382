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
    assert resolve("configs/eval/suites/tiny_suite.yaml") == shipped("eval/suites/tiny_suite.yaml")
    assert resolve("tiny_suite", "suite") == shipped("eval/suites/tiny_suite.yaml")
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


def test_pipelines_task_files_and_suites_live_in_folders_of_their_own():
    """configs/pipelines/ holds pipelines only, configs/eval/tasks/ task files (and their data), configs/eval/suites/
    suite files: each file's folder says what it is."""
    from emotune.tasks.files import load_task_file
    from emotune.tasks.suites import find_suite

    assert {"tiny", "tiny-instruct", "demo", "distill"} <= set(names("pipeline"))
    assert all("eval" in (shipped("pipelines") / f"{n}.yaml").read_text() for n in names("pipeline"))
    for path in shipped("eval/tasks").glob("*.yaml"):
        load_task_file(path)
    assert {"tiny_suite", "tiny_instruct_suite"} <= set(names("suite"))
    for name in names("suite"):
        assert find_suite(name).file


# TODO(next release): the old paths go, and this test with them (emotune.resources.MOVED).
@pytest.mark.parametrize("old,new", [
    ("configs/pipeline/tiny.yaml", "pipelines/tiny.yaml"),
    ("emotune/configs/pipeline/demo.yaml", "pipelines/demo.yaml"),
    ("pipeline/distill.yaml", "pipelines/distill.yaml"),
    ("configs/pipeline/tiny_suite.yaml", "eval/suites/tiny_suite.yaml"),
    ("configs/pipeline/tiny_instruct_suite.yaml", "eval/suites/tiny_instruct_suite.yaml"),
    ("configs/pipeline/tiny_topic.yaml", "eval/tasks/tiny_topic.yaml"),
    ("configs/pipeline/tiny_instruct.yaml", "eval/tasks/tiny_instruct.yaml"),
    ("configs/pipeline/data/tiny_topic_train.jsonl", "eval/tasks/data/tiny_topic_train.jsonl"),
    ("configs/pipeline/data/tiny_instruct/eval.jsonl", "eval/tasks/data/tiny_instruct/eval.jsonl"),
])
def test_an_old_config_path_still_resolves_with_a_one_line_notice(tmp_path, monkeypatch, capsys, old, new):
    from emotune import resources

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(resources, "_noticed", set())
    assert resolve(old) == resolve(old, "pipeline") == shipped(new)
    err = capsys.readouterr().err
    assert err == f"emotune: {old} has moved to configs/{new}; the old path works until the next release\n"  # once
    assert resolve("configs/pipeline/nope.yaml") == Path("configs/pipeline/nope.yaml")  # no such file: unchanged
    (tmp_path / old).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / old).write_text("mine: true\n")
    assert resolve(old) == Path(old) and not capsys.readouterr().err  # a file of the user's there is the user's


def test_the_commands_take_the_old_paths_for_one_release(tmp_path, monkeypatch, capsys):
    """`emotune eval` given an old task file path, `emotune pipeline` an old pipeline whose suite is named by its
    old path: each reads the file from its new place, with one notice line per old path."""
    from emotune import resources
    from emotune.cli import main as emotune
    from emotune.launch.pipeline import load_pipeline_config
    from emotune.scheduling.scheduler import resolve_suite

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(resources, "_noticed", set())
    assert emotune(["eval", "--tasks", "configs/pipeline/tiny_topic.yaml", "--model", str(tmp_path / "no-model"),
                    "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == ("emotune: configs/pipeline/tiny_topic.yaml has moved to configs/eval/tasks/tiny_topic.yaml; "
                      "the old path works until the next release") and "no-model" in err[1] and len(err) == 2
    cfg = load_pipeline_config("configs/pipeline/tiny.yaml", ["eval.suite=configs/pipeline/tiny_suite.yaml"])
    assert cfg == load_pipeline_config("configs/pipelines/tiny.yaml", ["eval.suite=configs/pipeline/tiny_suite.yaml"])
    assert resolve_suite(cfg.eval.suite) == resolve_suite("configs/eval/suites/tiny_suite.yaml")
    assert [line.split(" has moved to ")[1].split(";")[0] for line in capsys.readouterr().err.splitlines()] == [
        "configs/pipelines/tiny.yaml", "configs/eval/suites/tiny_suite.yaml"]


@pytest.mark.parametrize("suite,count", [("paper", 8), ("icl", 7), ("demo", 2)])
def test_suites_load_from_the_shipped_tasks(tmp_path, monkeypatch, suite, count):
    from emotune.tasks.suites import load_suite

    monkeypatch.chdir(tmp_path)
    tasks = load_suite(suite)
    assert len(tasks) == count and all(Path(t.source).is_relative_to(shipped_root()) for t in tasks)


def test_the_demo_reads_a_users_own_override_at_the_old_place_for_one_release(tmp_path, monkeypatch, capsys):
    import emotune.launch.demo as demo
    import emotune.launch.pipeline as pipeline

    seen = []
    monkeypatch.setattr(pipeline, "main", lambda argv: seen.append(argv) or 0)
    monkeypatch.chdir(tmp_path)
    assert demo.main(["run_dir=x"]) == 0 and seen[-1] == ["configs/pipelines/demo.yaml", "run_dir=x"]
    assert capsys.readouterr().err == ""
    old = tmp_path / "configs" / "pipeline" / "demo.yaml"
    old.parent.mkdir(parents=True)
    old.write_text("run_dir: mine\n")
    assert demo.main([]) == 0 and seen[-1] == ["configs/pipeline/demo.yaml"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "configs/pipelines/demo.yaml" in err[0]
    new = tmp_path / "configs" / "pipelines" / "demo.yaml"
    new.parent.mkdir(parents=True)
    new.write_text("run_dir: newer\n")
    assert demo.main([]) == 0 and seen[-1] == ["configs/pipelines/demo.yaml"]
