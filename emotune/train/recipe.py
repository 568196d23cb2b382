"""`emotune train CONFIG [key=value ...]`: continual fine-tuning / instruction tuning on DeepSpeed ZeRO-3.

Reads top to bottom like a recipe:
  1. config (YAML + overrides)            5. cost embedding + objective (before LoRA, before DeepSpeed)
  2. distributed setup (1 rank if alone)  6. deepspeed.initialize (optimizer from the DeepSpeed JSON, warmup schedule)
  3. tokenizer + tokenised data           7. resume from the latest resumable state, if asked
  4. model (zero.Init), pad, resize       8. the loop: accumulate, clip, step; log; validate; checkpoint

Works as one process (it starts a one-rank group itself) and under `deepspeed --num_gpus N`,
`deepspeed --hostfile H`, `torchrun`, `deepspeed --module emotune train ...`.

Loss normalisation: the per-token losses of a whole optimizer step (all micro-batches on all ranks)
are summed and divided by the step's number of target tokens, so 1 rank x 2 accumulation steps and
2 ranks x 1 give the same update (and instruction batches of uneven length are weighted per token).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import math
import os
import socket
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from emotune.atomic import AppendLog, read_json, write_yaml
from emotune.errors import ArgumentParser, EmotuneError, one_line, run_cli
from emotune.train.config import TrainConfig, load_config
from emotune.resources import resolve as resolve_file

log = logging.getLogger("emotune.train")


# ----------------------------------------------------------------------------------------------
# distributed setup

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_distributed() -> tuple[int, int]:
    """Join the launcher's process group, or make a one-rank group when started alone."""
    if "RANK" not in os.environ and "OMPI_COMM_WORLD_RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())))
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu" and os.environ.get("EMOTUNE_BUILD_SHM_COMM", "0") != "1":
        # On CPU, the first init JIT-compiles a shared-memory kernel (~1 min) that only inference
        # all-reduce uses; training collectives go through gloo. Skip it (see DEEPSPEED.md).
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    deepspeed.init_distributed()
    import torch.distributed as dist

    return dist.get_rank(), dist.get_world_size()


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float]) -> list[float]:
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        from deepspeed.accelerator import get_accelerator

        dev = get_accelerator().current_device_name()
        t = t.to(dev)
        dist.all_reduce(t)
        t = t.cpu()
    return t.tolist()


# ----------------------------------------------------------------------------------------------
# DeepSpeed config: "auto" values filled from the run config

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
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        section = {"DeepSpeedZeroConfig": "zero_optimization"}.get(err.title, err.title)
        raise EmotuneError(f"{source}: {section}.{loc}: {first['msg']} (got {first.get('input')!r})") from None
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


def lr_lambda(total_steps: int, warmup_steps: int, kind: str):
    def f(step: int) -> float:  # DeepSpeed steps the scheduler after each optimizer step
        if kind != "constant" and step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        if kind in ("constant", "constant_with_warmup"):
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(max(progress, 0.0), 1.0)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)

    return f


# ----------------------------------------------------------------------------------------------
# logging sinks

class Reporter:
    """Console + JSONL (+ TensorBoard when installed) on rank 0."""

    def __init__(self, cfg: TrainConfig, rank: int, start_step: int = 0):
        self.rank = rank
        self.jsonl = None
        self.tb = None
        if rank != 0:
            return
        out = Path(cfg.output_dir)
        if "jsonl" in cfg.report_to:
            # Records of steps after the resumed one are dropped: the run is about to redo those steps.
            self.jsonl = AppendLog(out / "train_log.jsonl", keep=lambda r: not isinstance(r.get("step"), int) or r["step"] <= start_step)
        if "tensorboard" in cfg.report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "runs"))
            except ImportError:
                log.warning("report_to has tensorboard but the tensorboard package is not installed: skipped")

    def __call__(self, record: dict) -> None:
        if self.rank != 0:
            return
        if self.jsonl:
            self.jsonl.write(record)
        if self.tb:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])
        log.info(" ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))

    def close(self):
        if self.jsonl:
            self.jsonl.close()
        if self.tb:
            self.tb.close()


# ----------------------------------------------------------------------------------------------
# the stage

@dataclass
class TrainResult:
    engine: object
    tokenizer: object
    objective: object
    cost: object
    step: int
    tokens_seen: int
    checkpoints: list[Path] = field(default_factory=list)
    losses: dict[int, float] = field(default_factory=dict)
    best: dict | None = None  # the best checkpoint so far: {"step", "checkpoint", "metric", "value", "greater_is_better"}
    reexported: list[Path] = field(default_factory=list)  # exports a killed run never finished, written on resume


class SkippedSteps:
    """fp16 dynamic loss scaling: when the scaled gradients overflow, DeepSpeed skips the update (no parameter
    change, no LR-scheduler step) and halves the scale. Such a step is logged and retried on the same data;
    it is not progress (no step, no tokens counted). Many in a row means the scale is stuck at its floor."""

    def __init__(self, limit: int = 40):
        self.limit, self.total, self.in_a_row = limit, 0, 0

    def applied(self, engine, step: int, report) -> bool:
        was_applied = getattr(engine, "was_step_applied", None)
        if was_applied is None or was_applied():
            self.in_a_row = 0
            return True
        self.total += 1
        self.in_a_row += 1
        scale = getattr(getattr(engine, "optimizer", None), "cur_scale", None)
        report({"step": step, "skipped_step": True, "loss_scale": None if scale is None else float(scale),
                "skipped_total": self.total})
        if self.in_a_row >= self.limit:
            raise RuntimeError(f"{self.in_a_row} optimizer steps in a row skipped for fp16 overflow at step {step} "
                               f"(loss scale {scale}): the loss or the gradients are not finite; lower the learning "
                               "rate, or train in bf16 / fp32")
        return False


def _target_count(batch: dict) -> int:
    return int((batch["labels"][:, 1:] != -100).sum())


def evaluate(engine, batches: list[dict], objective, fused: bool) -> dict:
    from emotune.train.loss_step import loss_step

    engine.eval()
    sums = [0.0, 0.0]
    with torch.no_grad():
        for batch in batches:
            batch = {k: v.to(engine.device) for k, v in batch.items()}
            out = loss_step(engine, batch, objective, fused)
            n = int(out.n_tokens)
            sums[0] += float(out.ce) * n
            sums[1] += n
    engine.train()
    ce_sum, n = all_reduce_sum(sums)
    ce = ce_sum / max(n, 1.0)
    return {"eval_ce": ce, "eval_ppl": math.exp(min(ce, 50.0)), "eval_tokens": int(n)}


def preflight(cfg: TrainConfig) -> None:
    """Checks that need no model and no process group, so bad input fails in a second, on every rank."""
    for key, files in (("data.train_files", cfg.data.train_files), ("data.validation_files", cfg.data.validation_files)):
        for f in files or []:
            if not Path(f).is_file():
                raise EmotuneError(f"{key}: data file {f} not found")
    from emotune.train.checkpoint import locate_state
    from emotune.train.data import check_local_files
    from emotune.train.model import check_model_config

    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise EmotuneError(f"output_dir: {out} is a file, not a run directory")
    spec = cfg.resume_from_checkpoint
    if spec is not None and str(spec).lower() not in ("latest", "true", "auto", "none", "false", ""):
        locate_state(spec)  # an explicit state must exist and be complete

    check_local_files(cfg)  # every record of every local file, with file and line
    check_model_config(cfg)  # the model's files / config, its tokenizer, block_size vs its positions
    if cfg.objective.cost == "external":
        from emotune.train.cost import check_cost_source

        check_cost_source(cfg.objective.cost_source)
    check_deepspeed(deepspeed_config(cfg, None, None), cfg.deepspeed)  # exists, parses, agrees with the run config
    if cfg.fused_loss:
        try:
            importlib.import_module("emotune.train.fused_head")
        except ImportError:
            raise EmotuneError("fused_loss=true needs emotune.train.fused_head, which is not available; set fused_loss=false") from None


def run(cfg: TrainConfig) -> TrainResult:
    preflight(cfg)
    try:
        return _run(cfg)
    finally:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()  # a later model load in this process is not partitioned by accident


def _run(cfg: TrainConfig) -> TrainResult:
    # 2. distributed ------------------------------------------------------------------------
    rank, world = setup_distributed()
    import deepspeed
    from transformers import AutoConfig
    from transformers.integrations import HfDeepSpeedConfig

    from emotune.objectives import build_objective
    from emotune.train import checkpoint as ckpt
    from emotune.train.data import StepBatches, eval_batches, load_datasets, tokenizer_training_texts
    from emotune.train.loss_step import loss_step
    from emotune.train.model import apply_lora, build_cost, load_model, load_tokenizer, output_vocab_size

    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    out = Path(cfg.output_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    barrier()
    torch.manual_seed(cfg.seed)

    # 3. tokenizer + data -------------------------------------------------------------------
    tokenizer = load_tokenizer(cfg, rank, barrier, lambda: tokenizer_training_texts(cfg))
    if tokenizer.pad_token_id is None and cfg.model.pad_token == "eos":
        tokenizer.pad_token = tokenizer.eos_token
    train_split, val_split = load_datasets(cfg, tokenizer, rank, barrier)

    # 4. model under zero.Init ---------------------------------------------------------------
    if cfg.model.config is not None:
        hidden = cfg.model.config.get("hidden_size") or cfg.model.config.get("n_embd")
    else:
        from emotune.hub import resolve

        extra = resolve(cfg.model.name_or_path, "model.name_or_path", cfg.model.revision)
        try:
            mc = AutoConfig.from_pretrained(cfg.model.name_or_path, revision=cfg.model.revision,
                                            trust_remote_code=cfg.model.trust_remote_code, **extra)
        except (OSError, ValueError) as err:
            raise EmotuneError(f"model.name_or_path: cannot load a model config from {cfg.model.name_or_path!r}: "
                               f"{one_line(err)}") from None
        hidden = getattr(mc, "hidden_size", None) or getattr(mc, "n_embd", None)
    ds_config = deepspeed_config(cfg, world, hidden)
    hf_ds = HfDeepSpeedConfig(ds_config)  # noqa: F841  (must stay alive: from_pretrained partitions via zero.Init)
    model = load_model(cfg, tokenizer)
    vocab = output_vocab_size(model)
    if vocab < len(tokenizer):
        raise EmotuneError(f"the model's vocabulary ({vocab}) is smaller than the tokenizer's ({len(tokenizer)})")
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # 5. cost embedding + objective: from the base weights, after resize, before LoRA / DeepSpeed / resume
    cost = build_cost(cfg, model, vocab)
    objective = build_objective(cfg.objective.name, cfg.objective.params, cost=cost)
    if cost is not None and rank == 0:
        log.info("cost embedding: %s, %s", cost.source, "live LM head" if cost.source == "adaptive" else tuple(cost.matrix().shape))
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora, cfg.gradient_checkpointing)  # the head Parameter (adaptive cost) is unchanged

    # 6. DeepSpeed ---------------------------------------------------------------------------
    batches = StepBatches(train_split, cfg.per_device_train_batch_size, world, cfg.gradient_accumulation_steps, cfg.seed,
                          tokenizer.pad_token_id)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.num_train_epochs * batches.steps_per_epoch)
    warmup = cfg.warmup_steps or math.ceil(cfg.warmup_ratio * total_steps)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name.endswith("bias") or "norm" in name.lower() or ".ln_" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, model_parameters=groups, config=ds_config,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total_steps, warmup, cfg.lr_scheduler_type)))
    val_batches = eval_batches(val_split, cfg.per_device_eval_batch_size, world, rank, tokenizer.pad_token_id)

    # 7. resume ------------------------------------------------------------------------------
    step, tokens_seen = 0, 0
    manifest_base = {"objective": {"name": objective.name, "params": objective.params, "cost": cfg.objective.cost},
                     "config_hash": cfg.config_hash(), "world_size": world, "model": cfg.model.name_or_path or "config",
                     "dtype": cfg.dtype_name}
    result = TrainResult(engine, tokenizer, objective, cost, step, tokens_seen)
    export_dtype = None if cfg.export_dtype == "auto" else getattr(torch, cfg.export_dtype)

    def export(step: int, manifest: dict) -> Path | None:
        return ckpt.export_checkpoint(engine.module, tokenizer, out, step, manifest, rank, barrier, export_dtype, cfg.lora)

    def load_state(state: Path) -> dict:
        saved = read_json(state / ckpt.RESUMABLE, "resumable marker")
        if saved.get("world_size") not in (None, world):
            raise EmotuneError(f"resume: {state} was written by {saved['world_size']} ranks, this run has {world}; "
                               "ZeRO shards need the same world size (convert it with DeepSpeed's ds_to_universal first)")
        _, client = engine.load_checkpoint(str(state.parent), tag=state.name)  # verified by plan_resume: unpickled
        if client is None:
            raise EmotuneError(f"resume: DeepSpeed could not load {state}")
        return client

    def export_again(state: Path, client: dict) -> None:
        """The export of a resumable state that a killed run never completed, from that state's weights."""
        n = int(client["step"])
        manifest = client.get("export_manifest") or dict(manifest_base, tokens_seen=int(client["tokens_seen"]), metrics={},
                                                          max_steps=total_steps, final=n >= total_steps)
        path = export(n, manifest)
        if path is not None:
            result.reexported.append(path)
            log.warning("resume: exported %s again from %s (the run was killed before its export completed)", path, state)

    if rank == 0:
        removed = ckpt.clean_partial(out)
        if removed:
            log.info("removed what an interrupted run left half-written: %s", ", ".join(str(p.name) for p in removed))
    barrier()
    state, reexport, note = ckpt.plan_resume(out, cfg.resume_from_checkpoint, rank, cfg.trust_resume_state)
    if note and rank == 0:
        log.warning("%s", note)
    if state is not None and cfg.trust_resume_state and rank == 0:
        log.warning("trust_resume_state=true: loading %s without checking that this run wrote it; DeepSpeed unpickles it, "
                    "which runs any code it holds", state)
    for older in reexport:
        if older != state:
            export_again(older, load_state(older))
    if state is not None:
        client = load_state(state)
        step, tokens_seen = int(client["step"]), int(client["tokens_seen"])
        result.step, result.tokens_seen, result.best = step, tokens_seen, client.get("best")
        torch.set_rng_state(client["torch_rng"])
        if client.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(client["cuda_rng"])
        if state in reexport:
            export_again(state, client)
        log.info("resumed from %s at step %d (%d tokens seen)", state, step, tokens_seen)
        if client.get("config_hash") not in (None, cfg.config_hash()) and rank == 0:
            log.warning("resuming with a config that differs from the one %s was trained with (hash %s, now %s)",
                        state, client["config_hash"], cfg.config_hash())
        if rank == 0:
            ckpt.write_best(out, result.best)  # a run killed between its export and best.json
    if rank == 0:  # everything is validated and loaded: only now replace the record of what trains here
        # (not the trust given to one resume: a re-run from this record must not inherit it)
        write_yaml(out / "config.yaml", cfg.model_dump(mode="json", by_alias=True, exclude={"trust_resume_state"}))

    def better(value: float, best: dict | None) -> bool:
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if best is None:
            return True
        return value > best["value"] if cfg.greater_is_better else value < best["value"]

    def save(step: int, metrics: dict, evaluated: bool) -> None:
        metric = cfg.metric_for_best_model
        value = metrics.get(metric) if evaluated or not metric.startswith("eval_") else None  # no stale validation value
        if value is not None and better(value, result.best):
            result.best = {"step": step, "checkpoint": f"checkpoint-{step}", "metric": metric, "value": value,
                           "greater_is_better": cfg.greater_is_better}
        manifest = dict(manifest_base, tokens_seen=result.tokens_seen, metrics=metrics, max_steps=total_steps,
                        final=step >= total_steps, epoch=round(step / batches.steps_per_epoch, 4), best=result.best)
        client = {"step": step, "tokens_seen": result.tokens_seen, "world_size": world, "torch_rng": torch.get_rng_state(),
                  "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
                  "config_hash": cfg.config_hash(), "export_manifest": manifest, "best": result.best}
        ckpt.save_resumable(engine, out, step, client, rank, barrier, cfg.save_total_limit)
        path = export(step, manifest)
        if path is not None:
            ckpt.write_best(out, result.best)
            result.checkpoints.append(path)
            log.info("saved %s", path)

    # 8. the loop ----------------------------------------------------------------------------
    report = Reporter(cfg, rank, step)
    if rank == 0:
        log.info("training %d steps (%d per epoch, global batch %d = %d x %d ranks x %d accumulation), warmup %d, objective %s %s",
                 total_steps, batches.steps_per_epoch, batches.global_batch, cfg.per_device_train_batch_size, world,
                 cfg.gradient_accumulation_steps, warmup, objective.name, objective.params)
    progress = None
    if rank == 0 and not cfg.disable_tqdm:
        from tqdm.auto import tqdm

        progress = tqdm(total=total_steps, initial=step, desc="train", dynamic_ncols=True, file=sys.stderr)
    window: list[float] = [0.0] * 6  # loss, ce*n, demd*n, weight*n, n targets, steps
    t_window, tokens_window = time.time(), 0
    last_metrics: dict = {}
    skipped = SkippedSteps()
    engine.train()
    while step < total_steps:
        micro = batches.micro_batches(step, rank)
        # One divisor for every micro-batch of the step: its targets over all ranks and accumulation steps.
        local_targets = sum(_target_count(b) for b in micro)
        local_inputs = sum(int(b["attention_mask"].sum()) for b in micro)
        n_targets, n_inputs = all_reduce_sum([local_targets, local_inputs])
        divisor = max(n_targets, 1.0) / (world * cfg.gradient_accumulation_steps)
        lr = scheduler.get_last_lr()[0]
        sums = [0.0] * 5
        for batch in micro:
            batch = {k: v.to(engine.device) for k, v in batch.items()}
            batch["num_items_in_batch"] = torch.tensor(divisor, device=engine.device)
            out_ = loss_step(engine, batch, objective, cfg.fused_loss)
            engine.backward(out_.loss)
            engine.step()
            n = float(out_.n_tokens)
            sums[0] += float(out_.loss.detach())
            sums[1] += float(out_.ce) * n
            sums[2] += (float(out_.demd) * n) if out_.demd is not None else 0.0
            sums[3] += (float(out_.weight) * n) if out_.weight is not None else 0.0
            sums[4] += n
        if not skipped.applied(engine, step, report):  # fp16 overflow: same data again at the lower scale
            continue
        loss_sum, ce_sum, demd_sum, w_sum, n_sum = all_reduce_sum(sums)
        step += 1
        step_loss = loss_sum / (world * cfg.gradient_accumulation_steps)
        if not math.isfinite(step_loss):
            raise RuntimeError(f"non-finite loss {step_loss} at step {step}")
        result.losses[step] = step_loss
        result.tokens_seen += int(n_inputs)
        tokens_window += int(n_inputs)
        for i, v in enumerate((step_loss, ce_sum, demd_sum, w_sum, n_sum, 1.0)):
            window[i] += v
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{step_loss:.4f}")
        if step % cfg.logging_steps == 0 or step == total_steps:
            n = max(window[4], 1.0)
            elapsed = max(time.time() - t_window, 1e-9)
            grad_norm = engine.get_global_grad_norm()
            record = {"step": step, "epoch": round(step / batches.steps_per_epoch, 4), "loss": window[0] / window[5],
                      "ce": window[1] / n, "ppl": math.exp(min(window[1] / n, 50.0)), "lr": lr,
                      "grad_norm": float(grad_norm) if grad_norm is not None else None,
                      "tokens_seen": result.tokens_seen, "tokens_per_s": tokens_window / elapsed}
            if objective.name == "emo":
                record["demd"] = window[2] / n
                record["weight"] = window[3] / n
            elif objective.name in ("tailr", "mixce"):
                record["weight"] = window[3] / n
            report(record)
            last_metrics = {k: record[k] for k in ("loss", "ce", "ppl")}
            window, t_window, tokens_window = [0.0] * 6, time.time(), 0
        evaluated = bool(val_batches) and (step % (cfg.eval_steps or cfg.save_steps) == 0 or step == total_steps)
        if evaluated:
            ev = evaluate(engine, val_batches, objective, cfg.fused_loss)
            report({"step": step, **ev})
            last_metrics.update(ev)
        if step % cfg.save_steps == 0 or step == total_steps:
            save(step, dict(last_metrics), evaluated)
    if progress is not None:
        progress.close()
    report.close()
    result.step = step
    return result


# ----------------------------------------------------------------------------------------------
# CLI

def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = ArgumentParser(prog="emotune train", description="Fine-tune a causal LM with EMO (or MLE, TaiLr, MixCE) on DeepSpeed ZeRO-3.",
                                 epilog="Example: emotune train configs/train/tiny-cpu.yaml max_steps=20 objective.name=mle")
    ap.add_argument("config", help="run config (YAML)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, dotted for sections (data.block_size=128)")
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    return ap.parse_intermixed_args(argv)  # --local_rank may come before or after the overrides


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    cfg = load_config(args.config, args.overrides)
    rank = int(os.environ.get("RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("emotune").setLevel(logging.INFO if rank == 0 else logging.WARNING)
    result = run(cfg)
    if result.checkpoints:
        print(f"emotune train: done at step {result.step}; last checkpoint {result.checkpoints[-1]}")
    elif result.reexported:
        print(f"emotune train: {cfg.output_dir} was already at step {result.step}; exported again what a crash cut short: "
              + ", ".join(p.name for p in result.reexported))
    elif int(os.environ.get("RANK", "0")) == 0:
        print(f"emotune train: nothing to do, {cfg.output_dir} is already at step {result.step}")
    return 0


if __name__ == "__main__":  # `deepspeed --module emotune.train.recipe CONFIG`: the launcher's --local_rank is parsed above
    sys.exit(run_cli("train", main, sys.argv[1:]))
