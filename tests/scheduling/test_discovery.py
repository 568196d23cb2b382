"""Checkpoint discovery: only complete, verified checkpoints count."""

from __future__ import annotations

import json
import logging

from scheduling_helpers import write_checkpoint

from emotune.scheduling.discovery import Discovery, discover, read_checkpoint


def test_only_complete_and_intact_checkpoints(tmp_path, caplog):
    run = tmp_path
    good = [write_checkpoint(run, s, tokens=s * 10) for s in (100, 20)]
    write_checkpoint(run, 300, complete=False)  # no COMPLETE marker
    trunc = write_checkpoint(run, 400)
    w = trunc / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-7])  # truncated after the marker was written
    flipped = write_checkpoint(run, 500)
    data = bytearray((flipped / "model.safetensors").read_bytes())
    data[3] ^= 1
    (flipped / "model.safetensors").write_bytes(bytes(data))  # same size, other bytes
    nomani = write_checkpoint(run, 600)
    (nomani / "manifest.json").unlink()
    badjson = write_checkpoint(run, 700)
    (badjson / "manifest.json").write_text("{not json")
    missing = write_checkpoint(run, 800)
    (missing / "config.json").unlink()
    (run / ".checkpoint-900.tmp").mkdir()  # an export in progress
    (run / "checkpoint-latest").mkdir()
    with caplog.at_level(logging.WARNING, "emotune.scheduling.discovery"):
        found = discover(run)
    assert [c.step for c in found] == [20, 100]
    assert [c.path for c in found] == good[::-1]
    assert found[0].tokens_seen == 200 and found[0].objective == "emo" and not found[0].final
    text = caplog.text
    for step, why in [(300, "no COMPLETE"), (400, "SHA-256"), (500, "SHA-256"), (600, "no manifest"),
                      (700, "unreadable"), (800, "missing")]:
        assert f"checkpoint-{step}: " in text and why in text.split(f"checkpoint-{step}: ")[1].splitlines()[0], step


def test_fingerprint_and_warn_once(tmp_path, caplog):
    a = write_checkpoint(tmp_path / "a", 10)
    b = write_checkpoint(tmp_path / "b", 10)
    c = write_checkpoint(tmp_path / "c", 10, payload=b"other weights")
    assert read_checkpoint(a).fingerprint == read_checkpoint(b).fingerprint != read_checkpoint(c).fingerprint
    write_checkpoint(tmp_path / "d", 5, complete=False)
    d = Discovery(tmp_path / "d")
    with caplog.at_level(logging.WARNING, "emotune.scheduling.discovery"):
        assert d.scan() == [] and d.scan() == []
    assert caplog.text.count("checkpoint-5") == 1
    (tmp_path / "d" / "checkpoint-5" / "COMPLETE").write_text("5\n")  # the writer finished
    assert [c.step for c in d.scan()] == [5]


def test_final_and_lora_model_path(tmp_path):
    p = write_checkpoint(tmp_path, 30, final=True)
    assert read_checkpoint(p).final and read_checkpoint(p).model_path == p
    m = json.loads((p / "manifest.json").read_text())
    (p / "merged").mkdir()
    (p / "merged" / "config.json").write_text("{}")
    m["format"] = "lora"
    (p / "manifest.json").write_text(json.dumps(m))
    assert read_checkpoint(p).model_path == p / "merged"


def test_training_stage_export_is_discovered(tmp_path, tiny_cache):
    """The training stage's own exporter and our discovery agree on the contract."""
    import torch
    from eval_builders import build_llama

    from emotune.train.checkpoint import export_checkpoint

    tok = tiny_cache.load_tokenizer("eval")
    model = build_llama(None, len(tok))
    export_checkpoint(model, tok, tmp_path / "run", 7, {"tokens_seen": 4096, "objective": {"name": "mle"}},
                      rank=0, barrier=lambda: None, dtype=torch.float32)
    (c,) = discover(tmp_path / "run")
    assert (c.step, c.tokens_seen, c.objective) == (7, 4096, "mle")
    w = tmp_path / "run" / "checkpoint-7" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    assert discover(tmp_path / "run") == []
