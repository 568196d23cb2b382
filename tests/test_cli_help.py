"""`emotune COMMAND --help` lists what the command accepts: every shipped suite where it takes a suite,
every config key, objective and shipped config where it takes a config, what each positional argument is."""

from __future__ import annotations

import re

import pytest

from emotune.cli import main as emotune
from emotune.tasks.suites import shipped_suites


def raw_help(command: str, capsys) -> str:
    try:
        rc = emotune([command, "--help"])
    except SystemExit as exit_:  # argparse's --help exits
        rc = exit_.code or 0
    assert rc == 0
    return capsys.readouterr().out


def help_of(command: str, capsys) -> str:
    return " ".join(raw_help(command, capsys).split())  # argparse wraps lines anywhere: compare words


def option_help(text: str, option: str) -> str:
    """The help of one option: its line and the indented lines under it, up to the next option."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"  {option} "))
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"^  -", lines[i]) or not lines[i].strip()), len(lines))
    return " ".join(" ".join(lines[start:end]).split())


def test_the_shipped_suites_are_what_the_suites_file_holds():
    assert {"icl", "mmlu", "paper", "generation", "demo", "harness", "distill", "instruct"} <= set(shipped_suites())


@pytest.mark.parametrize("command", ["eval", "watch", "results", "report"])
def test_suite_help_lists_every_shipped_suite(command, capsys):
    suite = option_help(raw_help(command, capsys), "--suite")
    missing = [name for name in shipped_suites() if not re.search(rf"\b{re.escape(name)}\b", suite)]
    assert not missing, f"emotune {command} --suite help lacks {missing}: {suite}"


@pytest.mark.parametrize("command", ["results", "report"])
def test_run_dir_says_what_it_may_be(command, capsys):
    text = help_of(command, capsys)
    assert "output_dir" in text and "emotune eval --out" in text


def test_train_help_lists_keys_objectives_and_shipped_configs(capsys):
    from emotune.objectives.registry import OBJECTIVES
    from emotune.resources import names
    from emotune.train.config import TrainConfig

    text = help_of("train", capsys)
    for key in [*TrainConfig.model_fields, "block_size", "max_eval_samples", "name_or_path", *OBJECTIVES, *names("train")]:
        assert re.search(rf"(?<![\w-]){re.escape(key)}(?![\w-])", text), key


@pytest.mark.parametrize("command", ["pipeline", "demo"])
def test_pipeline_and_demo_help_list_keys_lists_and_configs(command, capsys):
    from emotune.launch.pipeline import PipelineConfig

    text = help_of(command, capsys)
    for key in [*PipelineConfig.model_fields, "eval_args", "overrides", "matrix", "headline", "demo", "tiny"]:
        assert re.search(rf"\b{key}\b", text), key
    assert "merges into the config's list" in text
    assert all(re.search(rf"\b{re.escape(name)}\b", text) for name in shipped_suites())
