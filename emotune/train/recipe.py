"""`emotune train CONFIG [key=value ...]`: continual fine-tuning / instruction tuning on DeepSpeed ZeRO-3.

`_run` reads top to bottom as the recipe's steps, each a function of its own (torchtune's shape):
  preflight            config, data files, model config, DeepSpeed JSON checked before any process group
  setup_distributed    join the launcher's process group (a one-rank group when started alone)
  setup_data           tokenizer (trained or loaded) + tokenised splits
  setup_model          model under zero.Init, cost embedding + objective (before LoRA and DeepSpeed), LoRA
  setup_optimizer      step batches, schedule length, parameter groups, deepspeed.initialize (LR schedule: optim.py)
  Checkpointer.resume  the latest resumable state this run wrote, if any (resume.py)
  train                the loop: accumulate, step, log, validate, save (Checkpointer.save)

Works as one process (it starts a one-rank group itself) and under `deepspeed --num_gpus N`,
`deepspeed --hostfile H`, `torchrun`, `deepspeed --module emotune.train.recipe ...`.

Loss normalisation: the per-token losses of a whole optimizer step (all micro-batches on all ranks)
are summed and divided by the step's number of target tokens, so 1 rank x 2 accumulation steps and
2 ranks x 1 give the same update (and instruction batches of uneven length are weighted per token).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import sys
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from emotune.errors import ArgumentParser, EmotuneError, one_line, run_cli
from emotune.plumbing import split_local_rank, take_local_rank
from emotune.train.config import TrainConfig, load_config
from emotune.train.distributed import all_reduce_sum, barrier, finish_distributed, setup_distributed
from emotune.train.ds_config import check_deepspeed, deepspeed_config
from emotune.train.metrics import LogWindow, SkippedSteps, StepSums
from emotune.train.optim import lr_scheduler, param_groups, schedule_length
from emotune.train.reporting import Reporter, progress_bar
from emotune.train.resume import Checkpointer

log = logging.getLogger("emotune.train")


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
    teacher: object = None  # the frozen teacher engine of a teacher target (emotune.train.teacher)


@dataclass
class Model:
    """What setup_model builds. `hf_ds` must stay alive while the model exists: transformers finds the
    ZeRO-3 config through a weak reference to it (from_pretrained partitions via zero.Init)."""

    module: object
    ds_config: dict
    hf_ds: object
    cost: object
    objective: object
    teacher: object = None


def _target_count(batch: dict) -> int:
    return int((batch["labels"][:, 1:] != -100).sum())


def evaluate(engine, batches: list[dict], objective, fused: bool, teacher=None) -> dict:
    from emotune.train.loss_step import loss_step

    engine.eval()
    sums = [0.0, 0.0]
    with torch.no_grad():
        for batch in batches:
            batch = {k: v.to(engine.device) for k, v in batch.items()}
            out = loss_step(engine, batch, objective, fused, teacher)
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
    check_chat_template(cfg)  # data.format: chat: a template to render conversations with
    if cfg.objective.cost == "external":
        from emotune.train.cost import check_cost_source, check_cost_tokenizer
        from emotune.train.model import load_tokenizer, student_tokenizer_exists

        check_cost_source(cfg.objective.cost_source)
        if student_tokenizer_exists(cfg):  # else checked when the model is built (build_cost)
            check_cost_tokenizer(cfg.objective.cost_source, load_tokenizer(cfg))
    if cfg.teacher is not None:
        from emotune.train.teacher import check_teacher

        check_teacher(cfg)
    check_deepspeed(deepspeed_config(cfg, None, None), cfg.deepspeed)  # exists, parses, agrees with the run config
    if cfg.fused_loss:
        try:
            importlib.import_module("emotune.train.fused_head")
        except ImportError:
            raise EmotuneError("fused_loss=true needs emotune.train.fused_head, which is not available; set fused_loss=false") from None


def check_chat_template(cfg: TrainConfig) -> None:
    from emotune.train.chat import no_template_error, prepare_tokenizer, resolve_template
    from emotune.train.model import load_tokenizer

    if resolve_template(cfg.data) is not None or cfg.data.format != "chat":
        return  # a given template (its syntax now checked) is used whatever the tokenizer has
    if cfg.model.train_tokenizer_vocab_size:
        raise no_template_error(cfg)  # a tokenizer trained on the data never has one
    prepare_tokenizer(load_tokenizer(cfg), cfg)


def run(cfg: TrainConfig) -> TrainResult:
    preflight(cfg)
    try:
        return _run(cfg)
    finally:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()  # a later model load in this process is not partitioned by accident


def _run(cfg: TrainConfig) -> TrainResult:
    rank, world = setup_distributed()
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    if rank == 0:
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    barrier()
    torch.manual_seed(cfg.seed)
    tokenizer, train_split, val_split = setup_data(cfg, rank)
    model = setup_model(cfg, tokenizer, rank, world)
    engine, scheduler, batches, total_steps, warmup = setup_optimizer(cfg, model, train_split, tokenizer, world)
    from emotune.train.batches import eval_batches

    val_batches = eval_batches(val_split, cfg.per_device_eval_batch_size, world, rank, tokenizer.pad_token_id)
    result = TrainResult(engine, tokenizer, model.objective, model.cost, 0, 0, teacher=model.teacher)
    saver = Checkpointer(cfg, engine, tokenizer, result, rank, world, total_steps, batches.steps_per_epoch)
    saver.resume()
    saver.record_config()
    if rank == 0:
        log.info("training %d steps (%d per epoch, global batch %d = %d x %d ranks x %d accumulation), warmup %d, objective %s %s",
                 total_steps, batches.steps_per_epoch, batches.global_batch, cfg.per_device_train_batch_size, world,
                 cfg.gradient_accumulation_steps, warmup, model.objective.name, model.objective.params)
    train(cfg, engine, scheduler, batches, val_batches, result, saver, rank, world, total_steps)
    return result


def setup_data(cfg: TrainConfig, rank: int):
    """(tokenizer, train split, validation split): the tokenizer loaded (or trained on the data), a pad token, the data."""
    from emotune.train.chat import prepare_tokenizer
    from emotune.train.data import load_datasets, tokenizer_training_texts
    from emotune.train.model import load_tokenizer

    tokenizer = load_tokenizer(cfg, rank, barrier, lambda: tokenizer_training_texts(cfg))
    prepare_tokenizer(tokenizer, cfg)  # data.chat_template, before tokenising: the exports carry it
    if tokenizer.pad_token_id is None and cfg.model.pad_token == "eos":
        tokenizer.pad_token = tokenizer.eos_token
    train_split, val_split = load_datasets(cfg, tokenizer, rank, barrier)
    return tokenizer, train_split, val_split


def hidden_size(cfg: TrainConfig) -> int | None:
    """The model's hidden size (DeepSpeed's "auto" bucket sizes), from the inline config or the model's config file."""
    if cfg.model.config is not None:
        return cfg.model.config.get("hidden_size") or cfg.model.config.get("n_embd")
    from transformers import AutoConfig

    from emotune.hub import resolve

    extra = resolve(cfg.model.name_or_path, "model.name_or_path", cfg.model.revision)
    try:
        mc = AutoConfig.from_pretrained(cfg.model.name_or_path, revision=cfg.model.revision,
                                        trust_remote_code=cfg.model.trust_remote_code, **extra)
    except (OSError, ValueError) as err:
        raise EmotuneError(f"model.name_or_path: cannot load a model config from {cfg.model.name_or_path!r}: "
                           f"{one_line(err)}") from None
    return getattr(mc, "hidden_size", None) or getattr(mc, "n_embd", None)


def setup_model(cfg: TrainConfig, tokenizer, rank: int, world: int) -> Model:
    """The model under zero.Init (padded, resized), then the cost embedding and objective from the base weights
    (after the resize, before LoRA / DeepSpeed / resume), then LoRA."""
    from transformers.integrations import HfDeepSpeedConfig

    from emotune.objectives import build_objective
    from emotune.train.model import apply_lora, build_cost, load_model, output_vocab_size

    ds_config = deepspeed_config(cfg, world, hidden_size(cfg))
    hf_ds = HfDeepSpeedConfig(ds_config)
    model = load_model(cfg, tokenizer)
    vocab = output_vocab_size(model)
    if vocab < len(tokenizer):
        raise EmotuneError(f"the model's vocabulary ({vocab}) is smaller than the tokenizer's ({len(tokenizer)})")
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    cost = build_cost(cfg, model, vocab, tokenizer)
    objective = build_objective(cfg.objective.name, cfg.objective_params(), cost=cost)
    if cost is not None and rank == 0:
        log.info("cost embedding: %s, %s", cost.source, "live LM head" if cost.source == "adaptive" else tuple(cost.matrix().shape))
    teacher = None
    if cfg.teacher is not None:  # partitioned like the student (the same HfDeepSpeedConfig), frozen, no optimizer
        from emotune.train.teacher import load_teacher

        teacher = load_teacher(cfg, ds_config, vocab, tokenizer)
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora, cfg.gradient_checkpointing)  # the head Parameter (adaptive cost) is unchanged
    return Model(model, ds_config, hf_ds, cost, objective, teacher)


def setup_optimizer(cfg: TrainConfig, model: Model, train_split, tokenizer, world: int):
    """(engine, scheduler, step batches, total steps, warmup steps): DeepSpeed builds the optimizer from its JSON."""
    import deepspeed

    from emotune.train.batches import StepBatches

    batches = StepBatches(train_split, cfg.per_device_train_batch_size, world, cfg.gradient_accumulation_steps, cfg.seed,
                          tokenizer.pad_token_id)
    total_steps, warmup = schedule_length(cfg, batches.steps_per_epoch)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model.module, model_parameters=param_groups(model.module, cfg.weight_decay), config=model.ds_config,
        lr_scheduler=lr_scheduler(total_steps, warmup, cfg.lr_scheduler_type))
    return engine, scheduler, batches, total_steps, warmup


def step_divisor(micro: list[dict], world: int, accum: int) -> tuple[float, float]:
    """(divisor, input tokens): one divisor for every micro-batch of the step, its targets over all ranks and
    accumulation steps (times world x accum, which DeepSpeed's gradient averaging divides out again)."""
    local_targets = sum(_target_count(b) for b in micro)
    local_inputs = sum(int(b["attention_mask"].sum()) for b in micro)
    n_targets, n_inputs = all_reduce_sum([local_targets, local_inputs])
    return max(n_targets, 1.0) / (world * accum), n_inputs


def micro_steps(engine, micro: list[dict], objective, divisor: float, fused: bool, teacher=None) -> StepSums:
    """Forward, backward and DeepSpeed's step for each micro-batch (DeepSpeed applies the update on the last)."""
    from emotune.train.loss_step import loss_step

    sums = StepSums()
    for batch in micro:
        batch = {k: v.to(engine.device) for k, v in batch.items()}
        batch["num_items_in_batch"] = torch.tensor(divisor, device=engine.device)
        out = loss_step(engine, batch, objective, fused, teacher)
        engine.backward(out.loss)
        engine.step()
        sums.add(out)
    return sums


def train(cfg: TrainConfig, engine, scheduler, batches, val_batches, result: TrainResult, saver: Checkpointer,
          rank: int, world: int, total_steps: int) -> None:
    """The loop from result.step to total_steps: one optimizer step per iteration (an fp16-skipped one is retried),
    a log line every logging_steps, validation every eval_steps, a checkpoint every save_steps and at the end."""
    report = Reporter(cfg, rank, result.step)
    progress = progress_bar(cfg, rank, total_steps, result.step)
    window, last_metrics, skipped = LogWindow(), {}, SkippedSteps()
    step, accum = result.step, cfg.gradient_accumulation_steps
    engine.train()
    while step < total_steps:
        micro = batches.micro_batches(step, rank)
        divisor, n_inputs = step_divisor(micro, world, accum)
        lr = scheduler.get_last_lr()[0]
        local = micro_steps(engine, micro, result.objective, divisor, cfg.fused_loss, result.teacher)
        if not skipped.applied(engine, step, report):  # fp16 overflow: same data again at the lower scale
            continue
        sums = local.all_reduced(all_reduce_sum)
        step += 1
        step_loss = sums.loss / (world * accum)
        if not math.isfinite(step_loss):
            raise RuntimeError(f"non-finite loss {step_loss} at step {step}")
        result.losses[step] = step_loss
        result.tokens_seen += int(n_inputs)
        window.add(step_loss, sums, int(n_inputs))
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{step_loss:.4f}")
        if step % cfg.logging_steps == 0 or step == total_steps:
            record = window.record(step, round(step / batches.steps_per_epoch, 4), lr, engine.get_global_grad_norm(),
                                   result.tokens_seen, result.objective.logged)
            report(record)
            last_metrics = {k: record[k] for k in ("loss", "ce", "ppl")}
            window.reset()
        evaluated = bool(val_batches) and (step % (cfg.eval_steps or cfg.save_steps) == 0 or step == total_steps)
        if evaluated:
            ev = evaluate(engine, val_batches, result.objective, cfg.fused_loss, result.teacher)
            report({"step": step, **ev})
            last_metrics.update(ev)
        if step % cfg.save_steps == 0 or step == total_steps:
            saver.save(step, dict(last_metrics), evaluated)
    if progress is not None:
        progress.close()
    report.close()
    result.step = step


# ----------------------------------------------------------------------------------------------
# CLI

def parse_args(argv: list[str]) -> argparse.Namespace:
    from emotune.train.config import keys_help

    ap = ArgumentParser(prog="emotune train", description="Fine-tune a causal LM with EMO (or MLE, TaiLr, MixCE) on DeepSpeed ZeRO-3.",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="\n\n".join(textwrap.fill(part, 100, break_on_hyphens=False) for part in keys_help().split("\n\n"))
                        + "\n\nExample: emotune train configs/train/tiny-cpu.yaml max_steps=20 objective.name=mle")
    ap.add_argument("config", help="run config (YAML): a shipped name (below) or a path")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, dotted for sections (data.block_size=128)")
    argv, local_rank = split_local_rank(argv)  # set by the deepspeed launcher, before or after the overrides
    args = ap.parse_intermixed_args(argv)
    args.local_rank = None if local_rank is None else int(local_rank)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(take_local_rank(list(sys.argv[1:] if argv is None else argv)))  # its value: LOCAL_RANK
    cfg = load_config(args.config, args.overrides)
    rank = int(os.environ.get("RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("emotune").setLevel(logging.INFO if rank == 0 else logging.WARNING)
    from emotune.hub import offline_if_unreachable

    offline = offline_if_unreachable()  # a hub dataset / model offline: the cache or one line at once, no retries
    if offline and rank == 0:
        print(f"emotune train: {offline}", flush=True)  # stdout: stderr is for the one-line error
    result = run(cfg)
    if result.checkpoints:
        print(f"emotune train: done at step {result.step}; last checkpoint {result.checkpoints[-1]}")
    elif result.reexported:
        print(f"emotune train: {cfg.output_dir} was already at step {result.step}; exported again what a crash cut short: "
              + ", ".join(p.name for p in result.reexported))
    elif int(os.environ.get("RANK", "0")) == 0:
        print(f"emotune train: nothing to do, {cfg.output_dir} is already at step {result.step}")
    finish_distributed()  # the process ends here: leave the group cleanly (a failed run exits without it)
    return 0


if __name__ == "__main__":  # `deepspeed --module emotune.train.recipe CONFIG`: main takes the launcher's --local_rank
    sys.exit(run_cli("train", main, sys.argv[1:]))
