"""Saving and resuming a run: the resumable DeepSpeed state + the verified export of each checkpoint, the best
checkpoint so far, and resuming from the latest state this run wrote (re-exporting what a killed run left unexported).

`Checkpointer` holds what every save needs (engine, tokenizer, run directory, rank, the manifest's fixed part),
so the recipe's loop calls `save(step, metrics, evaluated)` and its start `resume()`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from emotune.atomic import read_json, write_yaml
from emotune.errors import EmotuneError
from emotune.train import checkpoint as ckpt
from emotune.train.config import TrainConfig
from emotune.train.distributed import barrier

log = logging.getLogger("emotune.train")


def better(value, best: dict | None, greater_is_better: bool) -> bool:
    """Whether `value` beats the best so far (a non-finite or missing value never does)."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best["value"] if greater_is_better else value < best["value"]


class Checkpointer:
    def __init__(self, cfg: TrainConfig, engine, tokenizer, result, rank: int, world: int, total_steps: int,
                 steps_per_epoch: int):
        self.cfg, self.engine, self.tokenizer, self.result = cfg, engine, tokenizer, result
        self.rank, self.world, self.total_steps, self.steps_per_epoch = rank, world, total_steps, steps_per_epoch
        self.out = Path(cfg.output_dir)
        objective = result.objective
        self.manifest_base = {"objective": {"name": objective.name, "params": objective.params, "cost": cfg.objective.cost},
                              "config_hash": cfg.config_hash(), "world_size": world,
                              "model": cfg.model.name_or_path or "config", "dtype": cfg.dtype_name}
        self.export_dtype = None if cfg.export_dtype == "auto" else getattr(torch, cfg.export_dtype)

    def export(self, step: int, manifest: dict) -> Path | None:
        return ckpt.export_checkpoint(self.engine.module, self.tokenizer, self.out, step, manifest, self.rank, barrier,
                                      self.export_dtype, self.cfg.lora)

    def load_state(self, state: Path) -> dict:
        saved = read_json(state / ckpt.RESUMABLE, "resumable marker")
        if saved.get("world_size") not in (None, self.world):
            raise EmotuneError(f"resume: {state} was written by {saved['world_size']} ranks, this run has {self.world}; "
                               "ZeRO shards need the same world size (convert it with DeepSpeed's ds_to_universal first)")
        _, client = self.engine.load_checkpoint(str(state.parent), tag=state.name)  # verified by plan_resume: unpickled
        if client is None:
            raise EmotuneError(f"resume: DeepSpeed could not load {state}")
        return client

    def export_again(self, state: Path, client: dict) -> None:
        """The export of a resumable state that a killed run never completed, from that state's weights."""
        n = int(client["step"])
        manifest = client.get("export_manifest") or dict(self.manifest_base, tokens_seen=int(client["tokens_seen"]),
                                                          metrics={}, max_steps=self.total_steps, final=n >= self.total_steps)
        path = self.export(n, manifest)
        if path is not None:
            self.result.reexported.append(path)
            log.warning("resume: exported %s again from %s (the run was killed before its export completed)", path, state)

    def resume(self) -> None:
        """Clean what an interrupted save left, then load the latest (or the asked-for) state into the engine and
        `result` (step, tokens seen, best, RNG), exporting again what a crash cut short."""
        cfg, rank, result = self.cfg, self.rank, self.result
        if rank == 0:
            removed = ckpt.clean_partial(self.out)
            if removed:
                log.info("removed what an interrupted run left half-written: %s", ", ".join(str(p.name) for p in removed))
        barrier()
        state, reexport, note = ckpt.plan_resume(self.out, cfg.resume_from_checkpoint, rank, cfg.trust_resume_state)
        if note and rank == 0:
            log.warning("%s", note)
        if state is not None and cfg.trust_resume_state and rank == 0:
            log.warning("trust_resume_state=true: loading %s without checking that this run wrote it; DeepSpeed unpickles "
                        "it, which runs any code it holds", state)
        for older in reexport:
            if older != state:
                self.export_again(older, self.load_state(older))
        if state is None:
            return
        client = self.load_state(state)
        result.step, result.tokens_seen, result.best = int(client["step"]), int(client["tokens_seen"]), client.get("best")
        torch.set_rng_state(client["torch_rng"])
        if client.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(client["cuda_rng"])
        if state in reexport:
            self.export_again(state, client)
        log.info("resumed from %s at step %d (%d tokens seen)", state, result.step, result.tokens_seen)
        if client.get("config_hash") not in (None, cfg.config_hash()) and rank == 0:
            log.warning("resuming with a config that differs from the one %s was trained with (hash %s, now %s)",
                        state, client["config_hash"], cfg.config_hash())
        if rank == 0:
            ckpt.write_best(self.out, result.best)  # a run killed between its export and best.json

    def record_config(self) -> None:
        """Everything is validated and loaded: only now replace the record of what trains here (not the trust
        given to one resume: a re-run from this record must not inherit it)."""
        if self.rank == 0:
            write_yaml(self.out / "config.yaml",
                       self.cfg.model_dump(mode="json", by_alias=True, exclude={"trust_resume_state"}))

    def save(self, step: int, metrics: dict, evaluated: bool) -> None:
        """Resumable state, then the export (+ best.json) of checkpoint-STEP."""
        cfg, result = self.cfg, self.result
        metric = cfg.metric_for_best_model
        value = metrics.get(metric) if evaluated or not metric.startswith("eval_") else None  # no stale validation value
        if value is not None and better(value, result.best, cfg.greater_is_better):
            result.best = {"step": step, "checkpoint": f"checkpoint-{step}", "metric": metric, "value": value,
                           "greater_is_better": cfg.greater_is_better}
        manifest = dict(self.manifest_base, tokens_seen=result.tokens_seen, metrics=metrics, max_steps=self.total_steps,
                        final=step >= self.total_steps, epoch=round(step / self.steps_per_epoch, 4), best=result.best)
        client = {"step": step, "tokens_seen": result.tokens_seen, "world_size": self.world,
                  "torch_rng": torch.get_rng_state(),
                  "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
                  "config_hash": cfg.config_hash(), "export_manifest": manifest, "best": result.best}
        ckpt.save_resumable(self.engine, self.out, step, client, self.rank, barrier, cfg.save_total_limit)
        path = self.export(step, manifest)
        if path is not None:
            ckpt.write_best(self.out, result.best)
            result.checkpoints.append(path)
            log.info("saved %s", path)
