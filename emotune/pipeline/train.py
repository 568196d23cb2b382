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
import yaml

from emotune.errors import EmotuneError
from emotune.pipeline.config import TrainConfig, load_config

log = logging.getLogger("emotune.train")
REPO_ROOT = Path(__file__).resolve().parents[2]


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
    path = Path(cfg.deepspeed)
    if not path.is_file() and not path.is_absolute() and (REPO_ROOT / path).is_file():
        path = REPO_ROOT / path
    if not path.is_file():
        raise EmotuneError(f"deepspeed: DeepSpeed config {cfg.deepspeed} not found")
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise EmotuneError(f"{path}: line {err.lineno}: invalid JSON: {err.msg}") from None
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

    def __init__(self, cfg: TrainConfig, rank: int):
        self.rank = rank
        self.jsonl = None
        self.tb = None
        if rank != 0:
            return
        out = Path(cfg.output_dir)
        if "jsonl" in cfg.report_to:
            self.jsonl = open(out / "train_log.jsonl", "a")
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
            self.jsonl.write(json.dumps(record) + "\n")
            self.jsonl.flush()
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
    from emotune.pipeline.loss_step import loss_step

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
    name = cfg.model.name_or_path
    if name is not None and not Path(name).exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise EmotuneError(f"model.name_or_path: model directory {name} not found")
    if cfg.objective.cost == "external":
        src = cfg.objective.cost_source
        if src.startswith((".", "/", "~")) and not Path(src).is_dir():
            raise EmotuneError(f"objective.cost_source: checkpoint directory {src} not found")
    deepspeed_config(cfg, None, None)  # the DeepSpeed JSON exists, parses and agrees with the run config
    if cfg.fused_loss:
        try:
            importlib.import_module("emotune.pipeline.fused_head")
        except ImportError:
            raise EmotuneError("fused_loss=true needs emotune.pipeline.fused_head, which is not available; set fused_loss=false") from None


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
    from emotune.pipeline import checkpoint as ckpt
    from emotune.pipeline.data import StepBatches, eval_batches, load_datasets, tokenizer_training_texts
    from emotune.pipeline.loss_step import loss_step
    from emotune.pipeline.model import apply_lora, build_cost, load_model, load_tokenizer, output_vocab_size

    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    out = Path(cfg.output_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False))
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
        try:
            mc = AutoConfig.from_pretrained(cfg.model.name_or_path, revision=cfg.model.revision,
                                            trust_remote_code=cfg.model.trust_remote_code)
        except (OSError, ValueError) as err:
            raise EmotuneError(f"model.name_or_path: cannot load a model config from {cfg.model.name_or_path!r}: {err}") from None
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
    state = ckpt.find_resume(out, cfg.resume_from_checkpoint)
    if state is not None:
        saved = json.loads((state / ckpt.RESUMABLE).read_text())
        if saved.get("world_size") not in (None, world):
            raise EmotuneError(f"resume: {state} was written by {saved['world_size']} ranks, this run has {world}; "
                               "ZeRO shards need the same world size (convert it with DeepSpeed's ds_to_universal first)")
        _, client = engine.load_checkpoint(str(state.parent), tag=state.name)
        if client is None:
            raise EmotuneError(f"resume: DeepSpeed could not load {state}")
        step, tokens_seen = int(client["step"]), int(client["tokens_seen"])
        torch.set_rng_state(client["torch_rng"])
        if client.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(client["cuda_rng"])
        log.info("resumed from %s at step %d (%d tokens seen)", state, step, tokens_seen)
        if client.get("config_hash") not in (None, cfg.config_hash()) and rank == 0:
            log.warning("resuming with a config that differs from the one %s was trained with (hash %s, now %s)",
                        state, client["config_hash"], cfg.config_hash())

    manifest_base = {"objective": {"name": objective.name, "params": objective.params, "cost": cfg.objective.cost},
                     "config_hash": cfg.config_hash(), "world_size": world, "model": cfg.model.name_or_path or "config",
                     "dtype": cfg.dtype_name}
    result = TrainResult(engine, tokenizer, objective, cost, step, tokens_seen)

    def save(step: int, metrics: dict) -> None:
        client = {"step": step, "tokens_seen": result.tokens_seen, "world_size": world, "torch_rng": torch.get_rng_state(),
                  "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
                  "config_hash": cfg.config_hash()}
        ckpt.save_resumable(engine, out, step, client, rank, barrier, cfg.save_total_limit)
        export_dtype = None if cfg.export_dtype == "auto" else getattr(torch, cfg.export_dtype)
        path = ckpt.export_checkpoint(engine.module, tokenizer, out, step,
                                      dict(manifest_base, tokens_seen=result.tokens_seen, metrics=metrics,
                                           max_steps=total_steps, final=step >= total_steps,
                                           epoch=round(step / batches.steps_per_epoch, 4)),
                                      rank, barrier, export_dtype, cfg.lora)
        if path is not None:
            result.checkpoints.append(path)
            log.info("saved %s", path)

    # 8. the loop ----------------------------------------------------------------------------
    report = Reporter(cfg, rank)
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
        if val_batches and (step % (cfg.eval_steps or cfg.save_steps) == 0 or step == total_steps):
            ev = evaluate(engine, val_batches, objective, cfg.fused_loss)
            report({"step": step, **ev})
            last_metrics.update(ev)
        if step % cfg.save_steps == 0 or step == total_steps:
            save(step, dict(last_metrics))
    if progress is not None:
        progress.close()
    report.close()
    result.step = step
    return result


# ----------------------------------------------------------------------------------------------
# CLI

def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="emotune train", description="Fine-tune a causal LM with EMO (or MLE, TaiLr, MixCE) on DeepSpeed ZeRO-3.",
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
    elif int(os.environ.get("RANK", "0")) == 0:
        print(f"emotune train: nothing to do, {cfg.output_dir} is already at step {result.step}")
    return 0


if __name__ == "__main__":
    from emotune.launch.cli import main as cli_main

    sys.exit(cli_main(["train", *sys.argv[1:]]))
