"""emotune.manifest: the one reader of the checkpoint contract (the writer is pipeline/checkpoint.py)."""

from __future__ import annotations

import hashlib
import json

import pytest

from emotune.errors import EmotuneError
from emotune.manifest import COMPLETE, MANIFEST, BadCheckpoint, check_files, file_entries, files_digest, sha256_file, verify_checkpoint


def _checkpoint(tmp_path, files: dict[str, bytes], listed=None):
    d = tmp_path / "checkpoint-3"
    d.mkdir()
    for name, data in files.items():
        (d / name).write_bytes(data)
    listed = listed if listed is not None else {n: hashlib.sha256(b).hexdigest() for n, b in files.items()}
    (d / MANIFEST).write_text(json.dumps({"step": 3, "files": listed}))
    (d / COMPLETE).write_text("3\n")
    return d


def test_hashes_match_hashlib_and_a_good_checkpoint_verifies(tmp_path):
    d = _checkpoint(tmp_path, {"model.safetensors": b"w" * 5000, "config.json": b"{}"})
    assert sha256_file(d / "model.safetensors") == hashlib.sha256(b"w" * 5000).hexdigest()
    assert verify_checkpoint(d)["step"] == 3


def test_a_changed_or_missing_file_is_one_error_naming_it(tmp_path):
    d = _checkpoint(tmp_path, {"model.safetensors": b"w" * 100})
    (d / "model.safetensors").write_bytes(b"x" * 100)  # same size, other bytes
    with pytest.raises(EmotuneError, match=r"model\.safetensors does not match its manifest hash"):
        verify_checkpoint(d)
    (d / "model.safetensors").unlink()
    with pytest.raises(EmotuneError, match="model.safetensors is listed in the manifest but missing"):
        verify_checkpoint(d)
    (d / MANIFEST).write_text("[1, 2]")
    with pytest.raises(EmotuneError, match="not a JSON object"):
        verify_checkpoint(d)


def test_sizes_are_checked_before_any_hash(tmp_path):
    d = _checkpoint(tmp_path, {"a.bin": b"a" * 10},
                    listed=[{"path": "a.bin", "sha256": hashlib.sha256(b"a" * 10).hexdigest(), "size": 11}])
    entries = file_entries(json.loads((d / MANIFEST).read_text()))
    assert entries == {"a.bin": {"path": "a.bin", "sha256": hashlib.sha256(b"a" * 10).hexdigest(), "size": 11}}
    with pytest.raises(BadCheckpoint, match="has 10 bytes, the manifest says 11"):
        check_files(d, entries, hashes=False)


def test_the_digest_depends_on_names_and_hashes_only():
    one = {"a": {"sha256": "1"}, "b": {"sha256": "2"}}
    assert files_digest(one) == files_digest({"b": {"sha256": "2", "size": 9}, "a": {"sha256": "1"}})
    assert files_digest(one) != files_digest({"a": {"sha256": "2"}, "b": {"sha256": "1"}})
    with pytest.raises(BadCheckpoint, match="no sha256"):
        file_entries({"files": {"a": {"size": 1}}})
