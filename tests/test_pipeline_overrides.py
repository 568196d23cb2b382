"""`emotune pipeline CFG key=value`: an override of a key=value list (train.overrides, eval.eval_args,
runs.N.train.overrides) merges into the config's list per key, so the documented
`'train.overrides=[objective.name=mle]'` changes the objective and keeps the run's other settings."""

from __future__ import annotations

import pytest

from emotune.errors import EmotuneError
from emotune.launch.pipeline import expand_runs, load_pipeline_config
from emotune.train.config import load_config

TINY = "configs/pipelines/tiny.yaml"
KEPT = ["max_steps=20", "save_steps=10", "resume=null", "data.max_eval_samples=32"]


def test_the_documented_mle_arm_keeps_the_runs_other_settings(tmp_path):
    cfg = load_pipeline_config(TINY, [f"run_dir={tmp_path / 'tiny-mle'}", "train.overrides=[objective.name=mle]"])
    assert cfg.train.overrides == [*KEPT, "objective.name=mle"]
    (run,) = expand_runs(cfg)
    train = load_config(run.train.config, [*run.train.overrides, f"output_dir={run.run_dir}"])
    emo = load_config(run.train.config, load_pipeline_config(TINY, []).train.overrides)
    assert train.objective.name == "mle" and emo.objective.name == "emo"
    # the validation set and the rest are the EMO arm's: the two arms differ in the objective only
    assert train.data.max_eval_samples == emo.data.max_eval_samples == 32
    assert (train.max_steps, train.save_steps, train.resume_from_checkpoint) == \
        (emo.max_steps, emo.save_steps, emo.resume_from_checkpoint) == (20, 10, None)


def test_a_key_given_again_replaces_its_item_and_an_empty_list_empties():
    cfg = load_pipeline_config(TINY, ["train.overrides=[max_steps=5, seed=3]", "eval.eval_args=[limit=4]",
                                      "eval.eval_args=[limit=8, batch_size=2]"])
    assert cfg.train.overrides == [KEPT[1], KEPT[2], KEPT[3], "max_steps=5", "seed=3"]
    assert cfg.eval.eval_args == ["limit=8", "batch_size=2"]
    assert load_pipeline_config(TINY, ["train.overrides=[]"]).train.overrides == []
    # a single item needs no brackets; other keys are set as before
    cfg = load_pipeline_config(TINY, ["train.overrides=objective.name=mle", "eval.jobs=2"])
    assert cfg.train.overrides[-1] == "objective.name=mle" and cfg.eval.jobs == 2


def test_runs_of_a_matrix_merge_too():
    cfg = load_pipeline_config("configs/pipelines/demo.yaml", ["runs.1.train.overrides=[max_steps=3]"])
    before = load_pipeline_config("configs/pipelines/demo.yaml", []).runs[1].train.overrides
    assert cfg.runs[1].train.overrides == [o for o in before if not o.startswith("max_steps=")] + ["max_steps=3"]


@pytest.mark.parametrize("item,says", [("train.overrides=[5]", "is not key=value"),
                                       ("train.overrides=[=x]", "is not key=value")])
def test_a_bad_item_is_one_line(item, says):
    with pytest.raises(EmotuneError, match=says) as err:
        load_pipeline_config(TINY, [item])
    assert "\n" not in str(err.value) and "merges" in str(err.value)


def test_other_lists_are_replaced():
    before = load_pipeline_config("configs/pipelines/demo.yaml", []).report.headline
    cfg = load_pipeline_config("configs/pipelines/demo.yaml", ["report.headline=[mauve]"])
    assert len(before) > 1 and cfg.report.headline == ["mauve"]


def test_a_run_that_fails_before_its_first_checkpoint_ends_the_pipeline(tmp_path):
    """Training that exits before writing a checkpoint leaves the run's scheduler with no row at all: the drain
    must end (it waited forever) and the pipeline exit with training's failure in one line."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    fail = f"train.command=[{sys.executable},-c,'import sys; sys.exit(3)']"
    proc = subprocess.run([sys.executable, "-m", "emotune", "pipeline", TINY, f"run_dir={tmp_path / 'run'}", fail,
                           "eval.poll=0.2"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "exited with status 3" in last and "Traceback" not in proc.stderr
