"""The DeepSpeed JSON of a run: a shipped or user file whose "auto" values are filled from the run config,
checked for shape here and by DeepSpeed's own parser before any process group exists."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from emotune.errors import EmotuneError, one_line
from emotune.plumbing import first_problem
from emotune.resources import resolve as resolve_file
from emotune.train.config import TrainConfig


def deepspeed_config(cfg: TrainConfig, world_size: int | None, hidden_size: int | None) -> dict:
    path = resolve_file(cfg.deepspeed, "deepspeed")  # the user's file, else a shipped one
    if not path.is_file():
        raise EmotuneError(f"deepspeed: DeepSpeed config {cfg.deepspeed} not found")
    try:
        ds = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise EmotuneError(f"{path}: line {err.lineno}: invalid JSON: {err.msg}") from None
    except UnicodeDecodeError:
        raise EmotuneError(f"{path}: not a text file (invalid UTF-8)") from None
    check_deepspeed_shape(ds, path)
    micro, accum = cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps
    h = hidden_size or 1024
    fill = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "train_batch_size": micro * accum * (world_size or 1),
        "gradient_clipping": cfg.max_grad_norm,
    }
    for key, value in fill.items():
        if ds.get(key) == "auto":
            ds[key] = value
        elif key in ds and key != "gradient_clipping" and ds[key] != value and (world_size or key != "train_batch_size"):
            raise EmotuneError(f"{path}: {key}={ds[key]} disagrees with the run config ({value}); set it to \"auto\"")
    for section, enabled in (("bf16", cfg.bf16), ("fp16", cfg.fp16)):
        if isinstance(ds.get(section), dict) and ds[section].get("enabled") == "auto":
            ds[section]["enabled"] = enabled
        if enabled and not (ds.get(section) or {}).get("enabled"):
            ds[section] = {**(ds.get(section) or {}), "enabled": True}
    if (ds.get("bf16") or {}).get("enabled") and (ds.get("fp16") or {}).get("enabled"):
        raise EmotuneError(f"{path}: bf16 and fp16 are both enabled; set one of them to \"auto\"")
    opt = ds.get("optimizer", {}).get("params", {})
    for key, value in (("lr", cfg.learning_rate), ("betas", [cfg.adam_beta1, cfg.adam_beta2]), ("eps", cfg.adam_epsilon),
                       ("weight_decay", cfg.weight_decay)):
        if opt.get(key) == "auto":
            opt[key] = value
    zero = ds.get("zero_optimization", {})
    for key, value in (("reduce_bucket_size", h * h), ("stage3_prefetch_bucket_size", int(0.9 * h * h)),
                       ("stage3_param_persistence_threshold", 10 * h)):
        if zero.get(key) == "auto":
            zero[key] = value
    if "scheduler" in ds:
        raise EmotuneError(f"{path}: remove the \"scheduler\" section: the schedule comes from lr_scheduler_type / warmup_*")
    leftover = [k for k, v in _walk(ds) if v == "auto"]
    if leftover:
        raise EmotuneError(f"{path}: cannot fill \"auto\" for {leftover[0]}")
    return ds


# Sections that must be JSON objects, and keys that must be numbers (or "auto"), in a DeepSpeed config.
_DS_SECTIONS = ("zero_optimization", "optimizer", "optimizer.params", "bf16", "fp16", "scheduler", "activation_checkpointing",
                "zero_optimization.offload_param", "zero_optimization.offload_optimizer", "flops_profiler", "comms_logger")
_DS_INTS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size", "steps_per_print")
_DS_NUMBERS = ("gradient_clipping",)


def check_deepspeed_shape(ds, path: Path) -> None:
    """The shape and types our filling relies on, so a wrong one is a line naming the key, not a crash."""
    if not isinstance(ds, dict):
        raise EmotuneError(f"{path}: a DeepSpeed config must be a JSON object, not {type(ds).__name__}")
    for dotted in _DS_SECTIONS:
        node, parts = ds, dotted.split(".")
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and parts[-1] in node and not isinstance(node[parts[-1]], dict):
            raise EmotuneError(f"{path}: {dotted} must be a JSON object, not {type(node[parts[-1]]).__name__}")
    for key in _DS_INTS + _DS_NUMBERS:
        value = ds.get(key)
        if value is None or value == "auto":
            continue
        ok = isinstance(value, int) and value >= 1 if key in _DS_INTS else isinstance(value, (int, float)) and value >= 0
        if isinstance(value, bool) or not ok:
            raise EmotuneError(f"{path}: {key} must be \"auto\" or a {'positive integer' if key in _DS_INTS else 'number >= 0'}"
                               f" (got {value!r})")
    if "optimizer" in ds and not isinstance(ds["optimizer"].get("type"), str):
        raise EmotuneError(f"{path}: optimizer.type must be a string (e.g. \"AdamW\")")


def check_deepspeed(ds: dict, source: str) -> None:
    """Let DeepSpeed's own config parser judge the rest (ZeRO stage, unknown keys, value types), before any
    process group exists. train_batch_size is left out: it depends on the world size, checked at start."""
    from pydantic import ValidationError

    trial = {k: v for k, v in ds.items() if k != "train_batch_size"}
    try:
        with _held_deepspeed_logs():
            from deepspeed.runtime.config import DeepSpeedConfig

            DeepSpeedConfig(trial)
    except ValidationError as err:
        problem = first_problem(err)
        section = {"DeepSpeedZeroConfig": "zero_optimization"}.get(err.title, err.title)
        raise EmotuneError(f"{source}: {section}.{problem.dotted()}: {problem.raw_msg}{problem.got()}") from None
    except Exception as err:  # noqa: BLE001 - DeepSpeed raises AssertionError, TypeError, ValueError...
        raise EmotuneError(f"{source}: DeepSpeed rejects it: {one_line(err)}") from None


@contextlib.contextmanager
def _held_deepspeed_logs():
    """Hold back what DeepSpeed logs while it is imported and parses the config (its accelerator notice):
    replayed when the check passes, dropped when it fails, so a bad config stays one line on stderr."""
    held: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:
        held.append(record)
        return False

    ds_log = logging.getLogger("DeepSpeed")  # deepspeed.utils.logging's logger, filters survive its setup
    ds_log.addFilter(hold)
    try:
        yield
    finally:
        ds_log.removeFilter(hold)
    for record in held:  # reached only when the block succeeded
        ds_log.handle(record)


def _walk(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _walk(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v
