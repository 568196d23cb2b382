"""Where the training stage's records go, on rank 0 only: the console log, train_log.jsonl (atomic appends;
records past a resumed step dropped), TensorBoard when installed, Weights & Biases when `report_to` has
`wandb` (as with HF's Trainer: project from WANDB_PROJECT, the run named `run_name`, WANDB_MODE=offline
works without a network), and the tqdm progress bar."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from emotune.atomic import AppendLog
from emotune.train.config import TrainConfig

log = logging.getLogger("emotune.train")


class Reporter:
    """Console + JSONL (+ TensorBoard when installed) on rank 0."""

    def __init__(self, cfg: TrainConfig, rank: int, start_step: int = 0):
        self.rank = rank
        self.jsonl = None
        self.tb = None
        self.wandb = None
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
        if "wandb" in cfg.report_to:  # the config check made sure the package is there
            import wandb

            self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT") or "emotune",
                                    name=cfg.run_name or out.resolve().name, dir=os.environ.get("WANDB_DIR") or str(out),
                                    config=cfg.model_dump(mode="json"))

    def __call__(self, record: dict) -> None:
        if self.rank != 0:
            return
        if self.jsonl:
            self.jsonl.write(record)
        if self.tb:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])
        if self.wandb:  # train/... and eval/... as HF's Trainer names them
            prefix = "eval/" if any(k.startswith("eval_") for k in record) else "train/"
            self.wandb.log({prefix + k.removeprefix("eval_"): v for k, v in record.items()
                            if isinstance(v, (int, float)) and k != "step"}, step=record["step"])
        log.info(" ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))

    def close(self):
        if self.jsonl:
            self.jsonl.close()
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()


def progress_bar(cfg: TrainConfig, rank: int, total_steps: int, step: int):
    """A tqdm bar on rank 0 (None elsewhere, or with disable_tqdm)."""
    if rank != 0 or cfg.disable_tqdm:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total_steps, initial=step, desc="train", dynamic_ncols=True, file=sys.stderr)
