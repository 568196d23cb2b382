"""The one prepared GPU check: numerics, loss memory/time, a ZeRO-3 bf16 training run and ICL timing, one JSON line.

    python3 benchmarks/gpu_check.py            # on one CUDA GPU, <= 8 minutes (see benchmarks/gpu_check.md)
    python benchmarks/gpu_check.py --smoke     # the same code paths at tiny sizes on the CPU (~1 minute)

No hub access, no CUDA op JIT builds (torch AdamW, not FusedAdam), runs the project from the working tree.
Sections (each prints a table; the last line is one JSON object with every figure):
  numerics  fused vs plain, every objective, bf16 and fp16 (backward of loss x 2^16, unscaled in float32),
            torch.compile on/off (fused path; CUDA only): max relative error of loss and gradients vs float64
  loss      peak memory and time of head + loss + backward at N tokens, V = 32000 and 128256 (LLaMA-3), bf16:
            F.cross_entropy baseline, plain MLE/EMO, fused MLE/EMO (compile off/on)
  train     a randomly initialised ~1B LLaMA-architecture model (from a config) under DeepSpeed ZeRO-3 bf16
            on one device, MLE vs EMO, plain vs fused, `--steps` steps each: step time, EMO/MLE ratio, peak
            memory, tokens/s, loss finite and decreasing (the batches repeat, so a working model learns them)
  icl       ICL scoring on that architecture: full-prompt vs shared-prefix time with identical predictions,
            demos chosen by a small retriever stand-in (hashed bag-of-words, torch top-k: no MiniLM, no
            faiss there); sampling throughput of the generation evaluation's sampler
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import sys
import time
import zlib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import paired  # noqa: E402  (benchmarks/paired.py)

from emotune.objectives import CostEmbedding, build_objective  # noqa: E402
from emotune.objectives.fused import fused_loss  # noqa: E402

OBJECTIVES = [("mle", {}), ("tailr", {}), ("mixce", {}), ("emo1", {}), ("emo2", {}), ("demd", {}),
              ("emo1", {"weighting": "batch"})]
FIGURES: dict = {}


def sizes(smoke: bool) -> dict:
    if smoke:
        return dict(num_n=48, num_v=512, num_h=64, loss_n=256, vocabs=(512, 1024), loss_h=64, loss_rounds=2,
                    model=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, vocab_size=512),
                    batch=2, seq=32, steps=3, icl_examples=2, icl_demos=2, sample_rows=2, sample_tokens=8)
    return dict(num_n=1024, num_v=32000, num_h=1024, loss_n=8192, vocabs=(32000, 128256), loss_h=4096, loss_rounds=7,
                # ~1.1B parameters: LLaMA architecture at TinyLlama's shape
                model=dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                           num_key_value_heads=4, vocab_size=32000),
                batch=4, seq=1024, steps=20, icl_examples=16, icl_demos=8, sample_rows=32, sample_tokens=128)


class Clock:
    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


def reset_peak(device) -> int:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    return 0


def peak_mb(device, base: int) -> float | None:
    if device.type == "cuda":
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    return None  # CPU: no allocator statistics (benchmarks/loss.py measures RSS per process)


# ---------------------------------------------------------------------------------------------------------
# numerics


def _rel(a, b) -> float:
    return float((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30))


def numerics(device, s: dict, compile_modes) -> None:
    g = torch.Generator().manual_seed(0)
    n, v, h = s["num_n"], s["num_v"], s["num_h"]
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64) * (2.0 / h ** 0.5)
    y = torch.randint(0, v, (n,), generator=g)
    E = torch.randn(v, 64, generator=g, dtype=torch.float64)
    labels = torch.cat([torch.tensor([-100]), y])[None].to(device)
    y = y.to(device)
    print(f"numerics: N={n} V={v} H={h}; max relative error vs float64 on the same rounded inputs")
    print(f"{'objective':<22}{'dtype':<6}{'path':<14}{'loss':>10}{'grad_h':>10}{'grad_W':>10}")
    worst: dict = {}
    for name, params in OBJECTIVES:
        label = name + "".join(f"-{k}={val}" for k, val in params.items())
        for dtype_name, dtype, scale in (("bf16", torch.bfloat16, 1.0), ("fp16", torch.float16, 2.0 ** 16)):
            h_d, w_d = hidden.to(dtype).to(device), weight.to(dtype).to(device)
            needs_cost = name not in ("mle", "tailr", "mixce")
            ref_obj = build_objective(name, params, CostEmbedding(E.to(device)) if needs_cost else None)
            hd, wd = h_d.double().requires_grad_(True), w_d.double().requires_grad_(True)
            ref = ref_obj((torch.cat([hd, hd[:1]]) @ wd.T)[None], labels)
            ref_g = torch.autograd.grad(ref.loss, (hd, wd))
            obj = build_objective(name, params, CostEmbedding(E.float().to(device)) if needs_cost else None)
            paths = [("plain", None)] + [(f"fused{'-compile' if c else ''}", c) for c in compile_modes]
            for path, comp in paths:
                hh, ww = h_d.clone().requires_grad_(True), w_d.clone().requires_grad_(True)
                if comp is None:
                    out = obj((torch.cat([hh, hh[:1]]) @ ww.T)[None], labels)
                else:
                    out = fused_loss(hh, ww, y, obj, compile=comp)
                grads = torch.autograd.grad(out.loss * scale, (hh, ww))
                errs = (float((out.loss.double() - ref.loss).abs() / ref.loss.abs()),
                        _rel(grads[0].double() / scale, ref_g[0]), _rel(grads[1].double() / scale, ref_g[1]))
                finite = all(math.isfinite(e) for e in errs)
                print(f"{label:<22}{dtype_name:<6}{path:<14}{errs[0]:>10.2e}{errs[1]:>10.2e}{errs[2]:>10.2e}"
                      f"{'' if finite else '  NON-FINITE'}")
                key = f"{dtype_name}_{path}"
                worst[key] = max(worst.get(key, 0.0), *[e if math.isfinite(e) else float("inf") for e in errs])
    FIGURES["numerics_max_rel_err"] = {k: float(f"{val:.3g}") for k, val in worst.items()}
    FIGURES["numerics_fused_not_worse"] = all(
        worst[k] <= 1.15 * worst[f"{k.split('_')[0]}_plain"] + 2.0 ** -8 for k in worst if "fused" in k)


# ---------------------------------------------------------------------------------------------------------
# loss memory and time


def loss_bench(device, s: dict, compile_modes) -> None:
    import torch.nn.functional as F

    clock = Clock(device)
    dtype = torch.bfloat16
    n, h = s["loss_n"], s["loss_h"]
    print(f"loss: head + loss + backward, N={n} H={h} bf16 on {device.type}")
    print(f"{'V':>7} {'method':<20}{'peak MB':>10}{'time ms':>10}")
    table = {}
    for v in s["vocabs"]:
        g = torch.Generator().manual_seed(1)
        hidden = torch.randn(n, h, generator=g).to(dtype).to(device).requires_grad_(True)
        weight = (torch.randn(v, h, generator=g) * h ** -0.5).to(dtype).to(device).requires_grad_(True)
        y = torch.randint(0, v, (n,), generator=g).to(device)
        labels = torch.cat([torch.tensor([-100], device=device), y])[None]
        shift = torch.cat([y, torch.tensor([-100], device=device)])
        cost = CostEmbedding(torch.randn(v, h, generator=g).to(device))
        mle, emo = build_objective("mle"), build_objective("emo", {}, cost)
        pad = torch.zeros(1, h, dtype=dtype, device=device)
        methods = {
            "torch_ce": lambda: F.cross_entropy((torch.cat([hidden, pad]) @ weight.T).float(), shift, ignore_index=-100),
            "plain_mle": lambda: mle((torch.cat([hidden, pad]) @ weight.T)[None], labels).loss,
            "plain_emo": lambda: emo((torch.cat([hidden, pad]) @ weight.T)[None], labels).loss,
        }
        for comp in compile_modes:
            tag = "-compile" if comp else ""
            methods[f"fused_mle{tag}"] = lambda c=comp: fused_loss(hidden, weight, y, mle, compile=c).loss
            methods[f"fused_emo{tag}"] = lambda c=comp: fused_loss(hidden, weight, y, emo, compile=c).loss
        calls = {name: (lambda fn=fn: torch.autograd.grad(fn(), (hidden, weight))) for name, fn in methods.items()}
        peaks = {}
        for name, call in calls.items():  # warm-up (kernels, compile) and the peak of one call, alone
            call()
            base = reset_peak(device)
            call()
            peaks[name] = peak_mb(device, base)
        # time: every method once per round, order reversed every other round (benchmarks/paired.py)
        times = paired.run_rounds(calls, s["loss_rounds"], warmup=0, clock=clock)
        for name in methods:
            mem, ms = peaks[name], paired.median(times[name]) * 1e3
            table[f"v{v}_{name}"] = {"peak_mb": None if mem is None else round(mem, 1), "ms": round(ms, 2)}
            print(f"{v:>7} {name:<20}{'-' if mem is None else f'{mem:.0f}':>10}{ms:>10.1f}")
        for key, a, b in (("plain_mle_over_torch_ce", "plain_mle", "torch_ce"),
                          ("fused_emo_over_fused_mle", "fused_emo", "fused_mle"),
                          ("plain_emo_over_plain_mle", "plain_emo", "plain_mle")):
            stats = paired.summarize(paired.round_ratios(times, a, b))
            print(paired.check(f"loss_v{v}_{key}", stats, 4 / 3 if key == "fused_emo_over_fused_mle" else None))
            FIGURES[f"loss_v{v}_{key}"] = stats
        hidden = weight = cost = None  # freed before the next vocabulary size
    FIGURES["loss"] = table


# ---------------------------------------------------------------------------------------------------------
# ZeRO-3 bf16 training


def llama_config(s: dict):
    from transformers import LlamaConfig

    return LlamaConfig(**s["model"], max_position_embeddings=max(s["seq"], 2048), tie_word_embeddings=False)


def train_bench(device, s: dict) -> None:
    import deepspeed
    from transformers import LlamaForCausalLM

    from emotune.train.distributed import setup_distributed
    from emotune.train.loss_step import loss_step

    setup_distributed()
    clock = Clock(device)
    cfg = llama_config(s)
    g = torch.Generator().manual_seed(2)
    batches = [torch.randint(0, cfg.vocab_size, (s["batch"], s["seq"]), generator=g) for _ in range(2)]
    ds_config = {
        "train_micro_batch_size_per_gpu": s["batch"], "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
        "bf16": {"enabled": True},
        "optimizer": {"type": "AdamW", "params": {"torch_adam": True, "lr": 3e-4, "weight_decay": 0.0}},
        "zero_optimization": {"stage": 3, "overlap_comm": False, "contiguous_gradients": True,
                              "stage3_param_persistence_threshold": 0},
        "steps_per_print": 10**9, "wall_clock_breakdown": False,
    }
    print(f"train: LLaMA {cfg.num_hidden_layers} layers, width {cfg.hidden_size}, V={cfg.vocab_size}, "
          f"ZeRO-3 bf16, 1 rank on {device.type}, batch {s['batch']}x{s['seq']}, {s['steps']} steps each")
    print(f"{'run':<12}{'params M':>9}{'step s':>9}{'tokens/s':>11}{'peak MB':>10}{'loss first':>11}{'loss last':>10}")
    runs = {}
    for name in ("mle", "emo"):
        for fused in (False, True):
            base = reset_peak(device)  # peak memory of the whole run: weights, optimizer state, activations
            torch.manual_seed(0)
            with torch.device(device):  # initialise on the device: a 1B model's init on the CPU takes minutes
                model = LlamaForCausalLM(cfg)
            n_params = sum(p.numel() for p in model.parameters())
            objective = build_objective(name, {}, CostEmbedding.frozen(model) if name == "emo" else None)
            if name == "emo":
                objective.cost.to(device)
            engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
            losses, times = [], []
            for step in range(s["steps"]):
                ids = batches[step % len(batches)].to(engine.device)
                batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
                t0 = clock()
                out = loss_step(engine, batch, objective, fused)
                engine.backward(out.loss)
                engine.step()
                times.append(clock() - t0)
                losses.append(float(out.ce))
            warm = times[len(times) // 4:] or times  # the first steps carry allocator / kernel warm-up
            step_s = sorted(warm)[len(warm) // 2]
            mem = peak_mb(device, base)
            key = f"{name}_{'fused' if fused else 'plain'}"
            half = max(1, len(losses) // 4)
            runs[key] = {"step_s": round(step_s, 4), "tokens_per_s": round(s["batch"] * s["seq"] / step_s, 1),
                         "peak_mb": None if mem is None else round(mem, 1),
                         "loss_finite": all(math.isfinite(x) for x in losses),
                         "loss_decreasing": sum(losses[-half:]) / half < sum(losses[:half]) / half,
                         "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4)}
            r = runs[key]
            print(f"{key:<12}{n_params / 1e6:>9.0f}{step_s:>9.3f}{r['tokens_per_s']:>11.0f}"
                  f"{'-' if mem is None else f'{mem:.0f}':>10}{losses[0]:>11.4f}{losses[-1]:>10.4f}")
            del engine, model, objective, out
            reset_peak(device)
    FIGURES["train"] = runs
    FIGURES["train_params_m"] = round(n_params / 1e6, 1)
    for path in ("plain", "fused"):
        FIGURES[f"train_step_emo_over_mle_{path}"] = round(runs[f"emo_{path}"]["step_s"] / runs[f"mle_{path}"]["step_s"], 3)
    FIGURES["train_loss_ok"] = all(r["loss_finite"] and r["loss_decreasing"] for r in runs.values())


# ---------------------------------------------------------------------------------------------------------
# ICL scoring and sampling


def bow_retrieve(pool: list[str], queries: list[str], k: int, dim: int = 512) -> list[list[int]]:
    """The retriever stand-in: hashed bag-of-words vectors, cosine similarity, torch top-k."""
    def embed(texts):
        out = torch.zeros(len(texts), dim)
        for i, t in enumerate(texts):
            for w in t.split():
                out[i, zlib.crc32(w.encode()) % dim] += 1.0  # stable across runs, unlike hash()
        return torch.nn.functional.normalize(out, dim=-1)

    return (embed(queries) @ embed(pool).T).topk(k, dim=-1).indices.tolist()


def icl_bench(device, s: dict) -> None:
    from icl_scoring import build_tokenizer, make_lexicon, sentence
    from transformers import LlamaForCausalLM

    from emotune.eval.generation.sampling import sample_batch
    from emotune.eval.icl.scorer import argmin_first, naive_token_nlls, rule_scores, shared_token_nlls
    from emotune.tasks.files import load_task

    clock = Clock(device)
    rng = random.Random(0)
    lexicon = make_lexicon(rng, 4000 if s["icl_examples"] > 4 else 300)
    task = load_task("sst2")
    pool_rows = [{"text": sentence(rng, lexicon, 19), "label": rng.choice(task.labels)} for _ in range(200)]
    tests = [{"text": sentence(rng, lexicon, 19)} for _ in range(s["icl_examples"])]
    t0 = time.perf_counter()
    demo_ids = bow_retrieve([r["text"] for r in pool_rows], [r["text"] for r in tests], s["icl_demos"])
    retrieve_s = time.perf_counter() - t0
    prompts = []
    for row, ids in zip(tests, demo_ids):
        ice = "\n".join(task.fill(pool_rows[i]["label"], pool_rows[i]) for i in ids) + "\n"
        prompts.append([ice + task.fill(label, row) for label in task.labels])
    tok = build_tokenizer([p for c in prompts for p in c] + [r["text"] for r in pool_rows])
    cfg = llama_config(s)
    torch.manual_seed(0)
    # float32 with TF32 off: full and shared scoring must rank the labels identically, not only approximately
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.device(device):
        model = LlamaForCausalLM(cfg).eval()
    groups = [[tok(p)["input_ids"] for p in c] for c in prompts]
    batch = 8
    with torch.no_grad():
        def full():
            return [naive_token_nlls(model, [g_[j] for g_ in groups], batch) for j in range(len(groups[0]))]

        per_label, nll_shared = full(), shared_token_nlls(model, groups, batch)  # warm-up, and the scores compared
        nll_full = [[per_label[j][i] for j in range(len(groups[0]))] for i in range(len(groups))]
        # paired rounds (benchmarks/paired.py): the speedup per round, its median
        times = paired.run_rounds({"full": full, "shared": lambda: shared_token_nlls(model, groups, batch)},
                                  s["loss_rounds"], warmup=0, clock=clock)
        speedup = paired.summarize(paired.round_ratios(times, "full", "shared"))
        full_s, shared_s = paired.median(times["full"]), paired.median(times["shared"])
        pred_full = [argmin_first(rule_scores(c, n)) for c, n in zip(groups, nll_full)]
        pred_shared = [argmin_first(rule_scores(c, n)) for c, n in zip(groups, nll_shared)]
        prompts_ids = [tok(r["text"])["input_ids"] for r in tests[: s["sample_rows"]]]
        prompts_ids = (prompts_ids * (s["sample_rows"] // max(len(prompts_ids), 1) + 1))[: s["sample_rows"]]
        sample_batch(model, prompts_ids[:2], [0, 1], 2, 2)  # warm-up
        t0 = clock()
        new = sample_batch(model, prompts_ids, list(range(len(prompts_ids))), s["sample_tokens"], s["sample_tokens"])
        sample_s = clock() - t0
    n_new = sum(len(x) for x in new)
    print(f"icl: sst2 template, {len(groups)} test inputs x {len(groups[0])} labels, {s['icl_demos']} retrieved demos "
          f"(stand-in retriever {retrieve_s * 1e3:.1f} ms); full {full_s:.3f} s, shared {shared_s:.3f} s, "
          f"speedup {speedup['median']:.2f} [IQR {speedup['q1']:.2f}-{speedup['q3']:.2f}], "
          f"identical predictions {pred_full == pred_shared}")
    print(f"sampling: {len(prompts_ids)} rows x {s['sample_tokens']} new tokens in {sample_s:.3f} s = "
          f"{n_new / sample_s:.0f} tokens/s")
    FIGURES.update(icl_full_s=round(full_s, 4), icl_shared_s=round(shared_s, 4),
                   icl_speedup=speedup, icl_identical_predictions=pred_full == pred_shared,
                   sampling_tokens_per_s=round(n_new / sample_s, 1))
    model = None  # freed (the closures above hold the name, not the model)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: the same code paths, in about a minute")
    ap.add_argument("--sections", default="numerics,loss,train,icl")
    ap.add_argument("--steps", type=int, default=None, help="training steps per run (default 20; smoke 3)")
    args = ap.parse_args(argv)
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if not args.smoke and device.type != "cuda":
        print("gpu_check: no CUDA device; run with --smoke for the CPU version", file=sys.stderr)
        return 2
    s = sizes(args.smoke)
    if args.steps:
        s["steps"] = args.steps
    if args.smoke:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DS_BUILD_OPS", "0")  # never JIT-build a DeepSpeed op inside the check
    compile_modes = (False, True) if device.type == "cuda" else (False,)  # compile applies to CUDA only
    FIGURES.update(device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu", smoke=args.smoke,
                   torch=torch.__version__, compile_checked=device.type == "cuda")
    t_start = time.perf_counter()
    sections = {"numerics": lambda: numerics(device, s, compile_modes), "loss": lambda: loss_bench(device, s, compile_modes),
                "train": lambda: train_bench(device, s), "icl": lambda: icl_bench(device, s)}
    for name in args.sections.split(","):
        t0 = time.perf_counter()
        sections[name]()
        FIGURES[f"{name}_section_s"] = round(time.perf_counter() - t0, 1)
        print(f"-- {name}: {FIGURES[f'{name}_section_s']} s", flush=True)
    FIGURES["total_s"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(FIGURES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
