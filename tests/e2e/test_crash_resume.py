"""kill -9 a 2-rank ZeRO-3 run at six moments of its saves, resume each time: the final weights are
torch.equal to an uninterrupted run's, and every checkpoint-N of that run is there, complete and equal.

The kills are deterministic: EMOTUNE_CRASH_AT=POINT:STEP[:RANK] makes the rank(s) SIGKILL themselves at a
named point of the save (emotune/train/crashpoint.py); the deepspeed launcher then kills the other
rank, as a dead node would leave it. Every save (save_steps=1) also validates, prunes and exports.

The reference run and the last resume start in the two forms users type first (`deepspeed --num_gpus 2
$(which emotune) train CFG` and `deepspeed --num_gpus 2 --module emotune train CFG`: the runner puts
--local_rank=N before the command), the killed ones as `--module emotune.train.recipe`: every form trains for
real on 2 ranks, to the same weights.

Cost: 8 launches of 2 ranks (1 reference, 6 killed, 1 to the end), 6 steps each at most; about 2.3 CPU-minutes
in all (measured: 3 min wall while other jobs held the 2 cores).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from support import free_port
from train_builders import losses_from_log, run_config, tiny_setup

from emotune.manifest import verify_checkpoint
from emotune.train import checkpoint as ckpt

pytestmark = pytest.mark.e2e
STEPS = 6


RECIPE = ["--module", "emotune.train.recipe"]
MODULE = ["--module", "emotune", "train"]  # the launcher forms users type first
SCRIPT = [shutil.which("emotune") or str(Path(sys.executable).parent / "emotune"), "train"]


def start(cfg_path: Path, crash: str | None = None, form: list[str] = RECIPE) -> tuple:
    """Start a 2-rank launch; its output goes to a file (a pipe nobody reads while it runs beside another could fill)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("EMOTUNE_CRASH_AT", None)
    if crash:
        env["EMOTUNE_CRASH_AT"] = crash
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
           *form, str(cfg_path)]
    log = tempfile.TemporaryFile("w+")
    p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return p, log, f"{crash or 'to the end'} ({' '.join(form)})", time.time()


def finish(launched: tuple) -> subprocess.CompletedProcess:
    p, log, what, start_time = launched
    try:
        p.wait(timeout=400)
        print(f"launch {what}: exit {p.returncode}, {time.time() - start_time:.1f} s")
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        log.seek(0)
        pytest.fail(f"launch {what} hung:\n{log.read()[-3000:]}")
    log.seek(0)
    out = log.read()
    log.close()
    return subprocess.CompletedProcess(p.args, p.returncode, out, "")


def launch(cfg_path: Path, crash: str | None = None, form: list[str] = RECIPE) -> subprocess.CompletedProcess:
    return finish(start(cfg_path, crash, form))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def test_kill_at_six_moments_of_the_save_and_resume(tmp_path):
    setup = tiny_setup(tmp_path / "setup")
    common = dict(max_steps=STEPS, save_steps=1, save_total_limit=1, gradient_accumulation_steps=1, resume="latest")
    cfgs = {}
    for name in ("ref", "crashed"):
        cfgs[name] = tmp_path / f"{name}.yaml"
        cfgs[name].write_text(yaml.safe_dump(run_config(setup, tmp_path / name, **common)))
    ref, out = tmp_path / "ref", tmp_path / "crashed"

    reference = start(cfgs["ref"], form=SCRIPT)  # independent of the killed runs: it runs beside the first of them

    # (point, what must be on disk right after the kill)
    moments = [
        ("deepspeed_save:2:1", lambda: (out / "resume/step-2").is_dir() and not (out / "resume/step-2/RESUMABLE").exists()
         and not (out / "checkpoint-2").exists()),
        ("before_resumable:3", lambda: (out / "resume/step-3").is_dir() and not (out / "resume/step-3/RESUMABLE").exists()
         and "step-3" not in ckpt.read_ledger(out)),
        ("after_resumable:3", lambda: (out / "resume/step-3/RESUMABLE").is_file() and not (out / "checkpoint-3").exists()),
        ("export_tmp:4", lambda: (out / ".checkpoint-4.tmp/model.safetensors").is_file() and not (out / "checkpoint-4").exists()),
        ("export_before_complete:5:0", lambda: (out / "checkpoint-5/manifest.json").is_file()
         and not (out / "checkpoint-5/COMPLETE").exists()),
        ("deepspeed_save:6:0", lambda: (out / "resume/step-6").is_dir() and not (out / "resume/step-6/RESUMABLE").exists()),
    ]
    logs = []
    for i, (crash, on_disk) in enumerate(moments):
        r = launch(cfgs["crashed"], crash)
        logs.append(r.stdout)
        assert r.returncode != 0, f"{crash}: the run was not killed\n{r.stdout[-3000:]}"
        assert on_disk(), f"{crash}: not killed where expected\n{r.stdout[-3000:]}"
        if i == 0:
            r = finish(reference)
            assert r.returncode == 0 and "unknown command" not in r.stdout, r.stdout[-4000:]
    r = launch(cfgs["crashed"], form=MODULE)
    logs.append(r.stdout)
    assert r.returncode == 0 and "unknown command" not in r.stdout, r.stdout[-4000:]
    # the steps whose state was saved but whose export a kill cut short were exported on the next resume
    reexported = sorted(int(line.split("checkpoint-")[1].split()[0]) for log in logs for line in log.splitlines()
                        if "again from" in line and "checkpoint-" in line)
    assert reexported == [3, 4, 5]

    final_ref, final_out = weights(ref / f"checkpoint-{STEPS}"), weights(out / f"checkpoint-{STEPS}")
    assert final_ref.keys() == final_out.keys()
    assert all(torch.equal(final_ref[k], final_out[k]) for k in final_ref)
    ref_ckpts = [p.name for p in ckpt.complete_checkpoints(ref)]
    assert ref_ckpts == [f"checkpoint-{n}" for n in range(1, STEPS + 1)]
    for name in ref_ckpts:
        m_ref, m_out = verify_checkpoint(ref / name), verify_checkpoint(out / name)
        a, b = weights(ref / name), weights(out / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        assert {k: m_out[k] for k in ("step", "tokens_seen", "metrics", "best")} == \
            {k: m_ref[k] for k in ("step", "tokens_seen", "metrics", "best")}, name
    assert not list(out.glob(".checkpoint-*.tmp")) and not list(out.glob(".*.tmp"))
    assert json.loads((out / "best.json").read_text()) == json.loads((ref / "best.json").read_text())
    # the training log: every step once, the same losses
    assert losses_from_log(out / "train_log.jsonl") == losses_from_log(ref / "train_log.jsonl")
    steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == list(range(1, STEPS + 1))
