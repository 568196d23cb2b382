"""Batches of a tokenised split: padded micro-batches that are a pure function of (seed, step, rank), so
resuming at step k gives exactly the batches the uninterrupted run saw, and the validation batches of a rank."""

from __future__ import annotations

import numpy as np
import torch

from emotune.errors import EmotuneError
from emotune.objectives.common import IGNORE_INDEX
from emotune.train.data import TokenizedSplit


def collate(examples: list[tuple[np.ndarray, np.ndarray]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example: pad id in input_ids, -100 in labels, 0 in attention_mask."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(examples):
        input_ids[i, : len(ids)] = torch.from_numpy(np.asarray(ids, dtype=np.int64))
        labels[i, : len(lab)] = torch.from_numpy(np.asarray(lab, dtype=np.int64))
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


class StepBatches:
    """Which examples every rank's micro-batches hold at every optimizer step.

    Each epoch is a permutation seeded by (seed, epoch); step s of an epoch takes the next
    `global_batch = micro * world * accum` examples; micro-batch m of rank r is chunk m*world + r.
    So one rank with accum=2 sees, per step, exactly the examples two ranks with accum=1 see.
    The last incomplete global batch of an epoch is dropped.
    """

    def __init__(self, split: TokenizedSplit, micro: int, world: int, accum: int, seed: int, pad_id: int):
        self.split, self.micro, self.world, self.accum, self.seed, self.pad_id = split, micro, world, accum, seed, pad_id
        self.global_batch = micro * world * accum
        self.steps_per_epoch = len(split) // self.global_batch
        if self.steps_per_epoch == 0:
            raise EmotuneError(
                f"the training data has {len(split)} examples/blocks, fewer than one global batch of {self.global_batch} "
                "(per_device_train_batch_size x ranks x gradient_accumulation_steps)")
        self._perm_epoch, self._perm = -1, None

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(len(self.split), generator=g), epoch
        return self._perm

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def micro_batches(self, step: int, rank: int) -> list[dict[str, torch.Tensor]]:
        """The `accum` micro-batches of `rank` for optimizer step `step` (0-based)."""
        perm = self.permutation(self.epoch_of(step))
        start = (step % self.steps_per_epoch) * self.global_batch
        out = []
        for m in range(self.accum):
            chunk = start + (m * self.world + rank) * self.micro
            idx = perm[chunk: chunk + self.micro].tolist()
            out.append(collate([(self.split.input_ids[i], self.split.labels[i]) for i in idx], self.pad_id))
        return out


def eval_batches(split: TokenizedSplit, batch_size: int, world: int, rank: int, pad_id: int) -> list[dict[str, torch.Tensor]]:
    """Rank `rank`'s share of the validation set. Every rank gets the same number of batches (ZeRO-3
    gathers parameters collectively in every forward); missing ones are filler with no targets."""
    n = len(split)
    n_batches = -(-n // (batch_size * world)) if n else 0
    out = []
    for b in range(n_batches):
        examples = []
        for j in range(batch_size):
            i = (b * world + rank) * batch_size + j
            if i < n:
                examples.append((split.input_ids[i], split.labels[i]))
        if not examples:  # filler: one example whose labels are all ignored
            examples = [(split.input_ids[0], np.full(len(split.labels[0]), IGNORE_INDEX))]
        out.append(collate(examples, pad_id))
    return out
