"""Where models, tokenizers and cost heads come from: a local folder, checked before loading, or a hub id.

Checked up front so a bad source is one EmotuneError line naming the config key, never a library's
multi-line message or a traceback:

- a local folder must hold a tokenizer (tokenizer.json, tokenizer.model, vocab.json + merges.txt, ...)
  and weights whose safetensors headers read and cover the file (a truncated or garbage file fails
  here, in milliseconds, not halfway through loading);
- a hub id that is not in the local cache fails at once when the hub is unreachable (HF_HUB_OFFLINE=1,
  or no route to the endpoint) instead of spending ~50 s in huggingface_hub's retries; a cached one is
  loaded with `local_files_only=True` then, so nothing retries either.

What loads from the hub without asking us first (a task's dataset, MAUVE's featuriser) is covered by
`offline_if_unreachable`: a command calls it once before any such load; an unreachable endpoint then
puts huggingface_hub, datasets and transformers in offline mode (what HF_HUB_OFFLINE=1 does), so every
load uses the cache or fails (or falls back) at once, and the command says so in one line.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

from emotune.errors import EmotuneError, one_line

# Any one of these makes a folder a loadable tokenizer (fast tokenizer file, sentencepiece, BPE, WordPiece).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.json",
                   "vocab.txt", "tiktoken.model")


def looks_like_path(source: str) -> bool:
    """A local path rather than a hub id (`org/name` or `name`)."""
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or os.sep != "/" and os.sep in source


def hub_offline_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"  # huggingface_hub's default endpoint


@lru_cache(maxsize=1)
def hub_reachable(timeout: float = 1.0) -> bool:
    """Can this process reach the hub endpoint? False under HF_HUB_OFFLINE; else one TCP connect, cached.

    Name lookup and connect run in a thread we stop waiting for after `timeout` s: a machine without a
    network can hang in the resolver far longer than socket's own timeout covers."""
    if hub_offline_env():
        return False
    url = urlparse(hub_endpoint())
    if not url.hostname:
        return False
    import urllib.request

    proxy = urllib.request.getproxies().get(url.scheme) or urllib.request.getproxies().get("all")
    if proxy and not urllib.request.proxy_bypass(url.hostname):  # behind a proxy, the proxy is what must answer
        url = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    ok: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout):
                ok.append(True)
        except (OSError, ValueError):
            ok.append(False)

    thread = threading.Thread(target=probe, name="emotune-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(ok and ok[0])


_OFFLINE_BY_US: list[str] = []  # the endpoint offline_if_unreachable found unreachable (it then set HF_HUB_OFFLINE)


def offline_reason() -> str:
    if _OFFLINE_BY_US and _OFFLINE_BY_US[0] == hub_endpoint() and hub_offline_env():  # still as we left it
        return f"the Hugging Face hub ({_OFFLINE_BY_US[0]}) is unreachable"
    return "HF_HUB_OFFLINE=1" if hub_offline_env() else f"the Hugging Face hub ({hub_endpoint()}) is unreachable"


def offline_if_unreachable() -> str | None:
    """Offline mode for every Hugging Face library in this process when the hub cannot be reached (or
    HF_HUB_OFFLINE=1 says so): loads use the local cache and fail at once, without retries. Returns the
    line to tell the user (None: the hub is reachable). Call before the libraries load anything."""
    if hub_reachable():
        return None
    why = offline_reason()
    if not hub_offline_env():
        _OFFLINE_BY_US[:] = [hub_endpoint()]
    os.environ["HF_HUB_OFFLINE"] = "1"  # for libraries imported from now on, and for child processes
    for module, names in (("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
                          ("datasets.config", ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))):
        if module in sys.modules:  # already imported: they read the variable at import
            for name in names:
                setattr(sys.modules[module], name, True)
    return f"{why}: offline, models, datasets and featurisers come from local files and the Hugging Face cache only"


def _cached(repo_id: str, filename: str, revision: str | None) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, filename, revision=revision), str)
    except Exception:  # noqa: BLE001 - an invalid repo id is simply not cached
        return False


def hub_kwargs(source: str, key: str, revision: str | None = None, filename: str = "config.json") -> dict:
    """`from_pretrained` keyword arguments for a hub id; EmotuneError at once if it cannot be had offline."""
    if _cached(source, filename, revision):
        return {} if hub_reachable() else {"local_files_only": True}
    if hub_reachable():
        return {}
    why = offline_reason()
    raise EmotuneError(f"{key}: {source!r} is not a local directory and not in the Hugging Face cache, and {why}; "
                       "download it first (huggingface-cli download) or give a local directory")


def resolve(source: str, key: str, revision: str | None = None, need_tokenizer: bool = False,
            need_weights: bool = False, filename: str = "config.json") -> dict:
    """Check `source` (local folder or hub id) for `key`; returns extra `from_pretrained` kwargs."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise EmotuneError(f"{key}: {source} is a file; give the checkpoint's directory")
        if need_tokenizer:
            check_tokenizer_dir(path, key)
        if need_weights:
            check_weights_dir(path, key)
        return {}
    if looks_like_path(source):
        raise EmotuneError(f"{key}: model directory {source} not found")
    return hub_kwargs(source, key, revision, filename)


def check_tokenizer_dir(path: Path, key: str) -> None:
    others = ("*.model", "*.tiktoken", "vocab.*")  # other families' vocabulary files: let transformers judge them
    if not any((path / name).is_file() for name in TOKENIZER_FILES) and not any(any(path.glob(g)) for g in others):
        raise EmotuneError(f"{key}: {path} holds no tokenizer files (one of {', '.join(TOKENIZER_FILES[:3])}, "
                           "vocab.json + merges.txt, ...)")


def check_weights_dir(path: Path, key: str) -> None:
    """config.json parses; every safetensors file (or the index's shards) has a readable header covering it."""
    config = path / "config.json"
    if not config.is_file():
        hint = f"; a LoRA checkpoint keeps its merged model in {path / 'merged'}" if (path / "merged" / "config.json").is_file() \
            else ""
        raise EmotuneError(f"{key}: {path} has no config.json (not a Hugging Face model directory){hint}")
    try:
        if not isinstance(json.loads(config.read_text(encoding="utf-8")), dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as err:
        raise EmotuneError(f"{config}: not a valid model config ({one_line(err)})") from None
    for file in safetensors_files(path, key):
        check_safetensors(file)


def safetensors_files(path: Path, key: str) -> list[Path]:
    """The model's safetensors files: the index's shards (all present), else every *.safetensors."""
    for index in sorted(path.glob("*.safetensors.index.json")):
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as err:
            raise EmotuneError(f"{index}: not a valid safetensors index ({one_line(err)})") from None
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise EmotuneError(f"{index}: shard {missing[0]} named by the index is missing")
        return [path / s for s in shards]
    return sorted(path.glob("*.safetensors"))


def check_safetensors(file: Path) -> None:
    """Read the header (not the tensors): garbage, a cut-off download or a half-written file fails here."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), "pt") as f:
            f.keys()
    except Exception as err:  # noqa: BLE001 - SafetensorError, OSError: all mean "not a usable file"
        raise EmotuneError(f"{file}: not a readable safetensors file ({one_line(err)})") from None
