"""The fused loss under a real 2-rank DeepSpeed ZeRO-3 run on CPU (gloo), through the training stage's
`loss_step`: same head gradient, same loss trajectory and same weights after three optimizer steps
as the plain (full-logits) path, for full fine-tuning and for LoRA on the LM head.

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
STEPS = 3


@pytest.mark.e2e
def test_zero3_two_ranks_fused_matches_plain(tmp_path):
    from support import free_port  # tests/ is on the path under pytest (conftest.py), not in the ranks

    out = tmp_path / "result.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"))
    env.pop("DS_ACCELERATOR", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), __file__, str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    res = json.loads(out.read_text())
    assert res["world_size"] == 2
    assert res["cost_shape"] == [res["vocab"], res["hidden"]]  # gathered, never the [0] placeholder
    assert res["head_partitioned"]  # the head weight really is a ZeRO-3 placeholder outside forward
    assert res["params_moved"] > 1e-2  # the optimizer really stepped (lr 1e-2, Adam)
    assert res["head_grad_norm"] > 0 and res["lora_head_grad_norm"] > 0
    # Full fine-tuning and LoRA on the LM head: same loss trajectory, same full gradient of the head
    # (LoRA: of the head's lora_B) at step 1, same weights after the steps.
    for kind in ("", "_lora"):
        for mode in ("plain", "fused"):
            assert len(res[mode + kind]["losses"]) == STEPS
        for a, b in zip(res["plain" + kind]["losses"], res["fused" + kind]["losses"]):
            assert abs(a - b) <= 1e-5 * max(1.0, abs(a)), res
        assert res["head_grad_rel_diff" + kind] < 1e-5, res
        # Adam amplifies float32 rounding where a gradient is ~0 (its step is ~lr g / |g|): the LoRA head's lora_B
        # moves 5e-5 to 1e-4 from rounding alone, with the kernel's order of operations; a wrong gradient would
        # move weights by ~lr = 1e-2, 30x over this bound.
        assert res["param_max_abs_diff" + kind] < 1e-2 * res["params_moved"], res


def main(out_path: str) -> None:
    import deepspeed
    import torch
    import torch.distributed as dist
    from deepspeed.utils import safe_get_full_grad
    from transformers import LlamaConfig, LlamaForCausalLM

    from emotune.objectives import CostEmbedding, build_objective
    from emotune.train.loss_step import loss_step

    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # docs/training.md
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    vocab, hidden = 211, 32
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    ds_config = {
        "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "bf16": {"enabled": False},
        "optimizer": {"type": "AdamW", "params": {"torch_adam": True, "lr": 1e-2, "weight_decay": 0.0}},
        "zero_optimization": {"stage": 3, "overlap_comm": False, "stage3_param_persistence_threshold": 0},
        "steps_per_print": 10**9,
    }

    def batch(step: int) -> dict:
        g = torch.Generator().manual_seed(1000 * step + rank)
        ids = torch.randint(0, vocab, (2, 12), generator=g)
        mask = torch.ones_like(ids)
        mask[1, -3:] = 0
        labels = ids.clone()
        labels[:, :4] = -100  # a masked prompt
        labels[1, -3:] = -100  # padding
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    res: dict = {"world_size": world, "vocab": vocab, "hidden": hidden}
    grads, params = {}, {}
    for mode in ("plain", "fused", "plain_lora", "fused_lora"):
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
        if mode.endswith("lora"):  # LoRA on the LM head: its A/B live in child modules of the head
            import peft

            model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                               target_modules=["q_proj", "lm_head"]))
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    torch.nn.init.normal_(p, std=0.3)
        engine, *_ = deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
                                          config=ds_config)
        named = dict(engine.module.named_parameters())
        head_name = next(n for n in named if "lm_head" in n and ("lora_B" in n if mode.endswith("lora") else True))
        head = named[head_name]
        if mode == "plain":
            res["head_partitioned"] = hasattr(head, "ds_id") and head.data.numel() == 0
        cost = CostEmbedding.frozen(engine.module)
        res["cost_shape"] = list(cost.matrix().shape)
        objective = build_objective("emo", {}, cost)
        losses = []
        for step in range(STEPS):
            out = loss_step(engine, batch(step), objective, fused=mode.startswith("fused"))
            engine.backward(out.loss)
            if step == 0:
                grads[mode] = safe_get_full_grad(head).detach().clone()
            engine.step()
            losses.append(out.loss.item())
        with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
            params[mode] = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
        res[mode] = {"losses": losses}
        del engine, model
    for kind in ("", "_lora"):
        plain, fused = grads["plain" + kind], grads["fused" + kind]
        res["head_grad_rel_diff" + kind] = float((fused - plain).abs().max() / plain.abs().max())
        res["param_max_abs_diff" + kind] = max(float((params["fused" + kind][n] - p).abs().max())
                                               for n, p in params["plain" + kind].items())
    res["head_grad_norm"] = float(grads["plain"].norm())
    res["lora_head_grad_norm"] = float(grads["plain_lora"].norm())
    torch.manual_seed(0)
    start = dict(LlamaForCausalLM(cfg).named_parameters())
    res["params_moved"] = max(float((params["plain"][n] - p.detach()).abs().max()) for n, p in start.items())
    if rank == 0:
        Path(out_path).write_text(json.dumps(res))
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
