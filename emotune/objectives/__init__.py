"""The training objectives of the EMO paper and its baselines: pure tensor functions, no I/O.

Specification: docs/objectives.md. Every loss takes HF-style `(logits [B,T,V], labels [B,T])`
(unshifted, -100 = ignored), does its math in float32 whatever the input dtype, and returns a
`LossOutput` (loss + plain CE / DEMD / weight diagnostics).
"""

from emotune.objectives.common import IGNORE_INDEX, LossOutput
from emotune.objectives.cost import CostEmbedding, CostEmbeddingError, normalize_rows
from emotune.objectives.demd import demd_dense, demd_one_hot
from emotune.objectives.hf import attach, trainer_loss
from emotune.objectives.losses import emo, mixce, mle, tailr
from emotune.objectives.registry import Objective, build_objective, describe

__all__ = [
    "IGNORE_INDEX", "LossOutput", "CostEmbedding", "CostEmbeddingError", "normalize_rows", "demd_dense",
    "demd_one_hot", "attach", "trainer_loss", "emo", "mixce", "mle", "tailr", "Objective", "build_objective", "describe",
]
