"""Distillation under a real 2-rank DeepSpeed ZeRO-3 run on CPU (gloo): the teacher is loaded by the training
stage's `load_teacher` (zero.Init under the student's config: partitioned, frozen, an inference-only engine with
no optimizer state), its forward runs inside `loss_step`, and the loss and the student's head gradient equal the
plain single-process computation (unpartitioned student and teacher, full logits) for dense-target EMO and KD,
on the fused and the plain path.

The test launches this file under `torchrun --nproc_per_node 2`; the worker half is `main()` below.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VOCAB = 97
CASES = [("emo", {"target": "teacher"}, 1.0, None), ("kd_forward", {}, 2.0, 8)]


def _configs():
    from transformers import LlamaConfig

    small = dict(vocab_size=VOCAB, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                 tie_word_embeddings=False, max_position_embeddings=64)
    return LlamaConfig(hidden_size=32, num_hidden_layers=1, **small), LlamaConfig(hidden_size=48, num_hidden_layers=2, **small)


@pytest.mark.e2e
def test_zero3_two_ranks_teacher_partitioned_loss_matches_plain(tmp_path):
    import torch
    from support import free_port  # tests/ is on the path under pytest (conftest.py), not in the ranks
    from transformers import LlamaForCausalLM

    torch.manual_seed(1)
    LlamaForCausalLM(_configs()[1]).save_pretrained(tmp_path / "teacher")  # safetensors
    out = tmp_path / "result.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"))
    env.pop("DS_ACCELERATOR", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), __file__, str(tmp_path / "teacher"), str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    res = json.loads(out.read_text())
    assert res["world_size"] == 2
    assert res["teacher_partitioned"] and res["teacher_frozen"] and res["teacher_no_optimizer"], res
    for key, r in res["cases"].items():
        assert r["loss_ref"] > 0 and r["grad_norm_ref"] > 0, key
        assert abs(r["loss"] - r["loss_ref"]) <= 1e-5 * max(1.0, abs(r["loss_ref"])), (key, r)
        assert r["grad_rel_diff"] < 1e-4, (key, r)


def main(teacher_dir: str, out_path: str) -> None:
    import deepspeed
    import torch
    import torch.distributed as dist
    from deepspeed.utils import safe_get_full_grad
    from transformers import LlamaForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    from emotune.objectives import CostEmbedding, build_objective
    from emotune.train.config import TeacherConfig
    from emotune.train.loss_step import loss_step
    from emotune.train.teacher import load_teacher

    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # docs/training.md
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    student_cfg, _ = _configs()
    ds_config = {
        "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "bf16": {"enabled": False},
        "optimizer": {"type": "AdamW", "params": {"torch_adam": True, "lr": 1e-2, "weight_decay": 0.0}},
        "zero_optimization": {"stage": 3, "overlap_comm": False, "stage3_param_persistence_threshold": 0},
        "steps_per_print": 10**9,
    }
    g = torch.Generator().manual_seed(100 + rank)
    ids = torch.randint(0, VOCAB, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    labels = ids.clone()
    labels[:, :4] = -100
    labels[1, -3:] = -100
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    inputs = {"input_ids": ids, "attention_mask": mask}

    # the plain single-process reference: unpartitioned models, full logits
    ref_teacher = LlamaForCausalLM.from_pretrained(teacher_dir).eval()
    torch.manual_seed(0)
    ref_student = LlamaForCausalLM(student_cfg)
    cost = CostEmbedding.frozen(ref_student)
    res: dict = {"world_size": world, "cases": {}}

    hf_ds = HfDeepSpeedConfig(ds_config)  # noqa: F841 - alive: the teacher is loaded under zero.Init
    run_cfg = type("Cfg", (), {"dtype_name": "float32"})()
    for name, params, temperature, top_k in CASES:
        run_cfg.teacher = TeacherConfig(model=teacher_dir, temperature=temperature, top_k=top_k)
        teacher = load_teacher(run_cfg, ds_config, VOCAB)
        head_t = teacher.module.lm_head.weight
        res["teacher_partitioned"] = hasattr(head_t, "ds_id") and head_t.data.numel() == 0
        res["teacher_frozen"] = not any(p.requires_grad for p in teacher.module.parameters()) and not teacher.module.training
        res["teacher_no_optimizer"] = type(teacher.optimizer).__name__ == "DeepSpeedZeRoOffload"
        objective = build_objective(name, {**params, "temperature": temperature, "top_k": top_k}, cost)

        ref_student.zero_grad(set_to_none=True)
        with torch.no_grad():
            t_logits = ref_teacher(**inputs).logits
        ref = objective(ref_student(**inputs).logits, labels, teacher_logits=t_logits)
        ref.loss.backward()
        ref_grad = ref_student.lm_head.weight.grad.clone()
        dist.all_reduce(ref_grad)  # ZeRO averages the ranks' gradients
        ref_grad /= world
        for fused in (True, False):
            torch.manual_seed(0)
            student = LlamaForCausalLM(student_cfg)
            engine, *_ = deepspeed.initialize(model=student, model_parameters=list(student.parameters()),
                                              config=ds_config)
            out = loss_step(engine, batch, objective, fused=fused, teacher=teacher)
            engine.backward(out.loss)
            grad = safe_get_full_grad(engine.module.lm_head.weight)
            res["cases"][f"{name}-{'fused' if fused else 'plain'}-rank{rank}"] = {
                "loss": float(out.loss), "loss_ref": float(ref.loss), "grad_norm_ref": float(ref_grad.norm()),
                "grad_rel_diff": float((grad - ref_grad).abs().max() / ref_grad.abs().max())}
            del engine
        del teacher
    gathered = [None] * world
    dist.all_gather_object(gathered, res["cases"])
    for part in gathered:
        res["cases"].update(part)
    if rank == 0:
        Path(out_path).write_text(json.dumps(res))
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
