"""The container image, built from the Dockerfile and run for real (podman + runc, no GPU, no registry).

`docker/cpu-image.sh` builds the same Dockerfile the GPU clusters use on a debootstrapped Debian base
with the CPU build of torch (cached between runs: the base tarball under ~/.cache/emotune-image and
podman's layer cache, so a rerun after a code change rebuilds the package layer only). Inside the
container, with a host directory mounted at /runs and an unprivileged uid of the host's choosing:
2-rank ZeRO-3 training of the tiny config, then evaluation of its checkpoint; the checkpoint lands on
the host owned by that uid and loads with `from_pretrained`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from system_programs import require

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "docker" / "cpu-image.sh"
TAG = "localhost/emotune:cpu"
UID = 4321  # not the image's own user (1000): any --user works and owns what it writes
pytestmark = pytest.mark.e2e


def _missing() -> list[str]:
    missing = [p for p in ("podman", "runc", "debootstrap") if not (shutil.which(p) or Path(f"/usr/sbin/{p}").exists())]
    if os.geteuid() != 0:
        missing.append("root (rootful podman, chown of the mounted directory)")
    return missing


def podman_run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), "run", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def image():
    require(_missing(), "the container image test", "Debian podman, runc, debootstrap; .ci/run installs them")
    start = time.monotonic()
    res = subprocess.run([str(SCRIPT), "build", TAG], capture_output=True, text=True, timeout=3600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    print(f"\nimage build: {time.monotonic() - start:.0f} s")
    return TAG


def test_help_a_bad_argument_and_the_default_owner(image, tmp_path):
    ok = podman_run(image, "--help")
    assert ok.returncode == 0 and ok.stdout.startswith("usage: emotune COMMAND"), ok.stderr
    bad = podman_run(image, "no-such-command")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "unknown command" in bad.stderr, bad.stderr
    missing = podman_run(image, "train", "/runs/missing.yaml")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "missing.yaml" in missing.stderr
    # Without --user the image's own user (uid 1000) writes, as docs/cluster.md says.
    host = tmp_path / "runs"
    host.mkdir()
    os.chown(host, 1000, 1000)
    res = podman_run("-v", f"{host}:/runs", image, "bash", "-c", "mkdir /runs/data && id -u > /runs/data/uid")
    assert res.returncode == 0, res.stderr[-2000:]
    written = [host / "data", host / "data" / "uid"]
    assert (host / "data" / "uid").read_text().strip() == "1000" and {p.stat().st_uid for p in written} == {1000}


def test_train_two_ranks_and_eval_in_the_container(image, tmp_path):
    host = tmp_path / "runs"
    host.mkdir()
    os.chown(host, UID, UID)
    common = ["--user", f"{UID}:{UID}", "-v", f"{host}:/runs", "-e", "HF_HUB_OFFLINE=1", "-e", "HF_DATASETS_OFFLINE=1",
              "-e", "OMP_NUM_THREADS=1", image]
    start = time.monotonic()
    # The form users type first: the DeepSpeed launcher around the module, a shipped config by name.
    train = podman_run(*common, "deepspeed", "--num_gpus", "2", "--module", "emotune", "train", "tiny-cpu",
                       "max_steps=2", "save_steps=2", "output_dir=/runs/tiny")
    train_s = time.monotonic() - start
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    ckpt = host / "tiny" / "checkpoint-2"
    assert (ckpt / "COMPLETE").exists()
    assert {p.stat().st_uid for p in ckpt.rglob("*")} == {UID}

    start = time.monotonic()
    ev = podman_run(*common, "eval", "--model", "/runs/tiny/checkpoint-2", "--tasks", "configs/eval/tasks/tiny_topic.yaml",
                    "--out", "/runs/eval", "progress=false")
    eval_s = time.monotonic() - start
    assert ev.returncode == 0, ev.stdout[-3000:] + ev.stderr[-3000:]
    summary = json.loads((host / "eval" / "summary.json").read_text())
    assert 0.0 <= summary["tasks"]["tiny_topic"]["metrics"]["accuracy"] <= 1.0
    assert (host / "eval" / "summary.json").stat().st_uid == UID
    print(f"\ncontainer: train 2 ranks {train_s:.0f} s, eval {eval_s:.0f} s")

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ckpt)
    assert model.config.model_type == "llama" and sum(p.numel() for p in model.parameters()) > 0
