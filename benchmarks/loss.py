"""Peak memory and time of loss + backward: plain vs fused, MLE and EMO, and our plain loss vs the library's
F.cross_entropy, side by side in one run.

    .venv/bin/python benchmarks/loss.py --threads 1           # N in {1024, 8192}, V=32000, H=512, fp32 + bf16
    .venv/bin/python benchmarks/loss.py --sizes 1024 --repeats 1 --dtypes fp32   # quick look
    .venv/bin/python benchmarks/loss.py --step --threads 1   # training step of a tiny LLaMA: EMO / MLE
    .venv/bin/python benchmarks/loss.py --threads 1 --labels zipf --methods plain_mle,plain_emo_ours  # text-like ids

Methods (hidden [N,H] and LM-head weight [V,H] in, gradients w.r.t. both out):
  torch_ce        logits = h Wᵀ, then F.cross_entropy as transformers' causal-LM loss calls it (float logits,
                  labels shifted by padding, ignore_index=-100): the library baseline
  plain_mle       logits = h Wᵀ, then emotune's mle on the [1, N+1, V] logits
  fused_mle       emotune.objectives.fused.fused_loss, objective mle
  plain_emo       EMO as the original code (DRSY/EMO) lays it out: logits, softmax, a dense one-hot,
                  q Ê and onehot Ê products, gt-detach, token weighting: several [N,V] tensors
  plain_emo_ours  emotune.objectives.emo on the [N,V] logits (gather, no one-hot)
  fused_emo       fused_loss, objective emo (EMO-1, token weighting, frozen cost Ê [V,H])
  ce_only_torch   the loss alone: logits [1, N+1, V] in, their gradient out, F.cross_entropy as above
  ce_only_mle     the loss alone, emotune's mle
  plain_dense_emo --dense: EMO with a teacher target on the plain path: the student's and the teacher's [N,V]
                  logits materialised (teacher hidden [N,H] and head [V,H] in), then the objective
  fused_dense_emo --dense: fused_loss with teacher=(hidden_t, W_t): both heads applied chunk by chunk
  plain_dense_kd, fused_dense_kd   the same for the forward-KL KD baseline
fp32 runs every method; bf16 (h, W and the logits in bfloat16, loss math float32) the plain ones.
Each (method, N, repeat) runs in its own process so its peak RSS is its own: peak = VmHWM after one
loss+backward minus VmRSS before it (inputs already allocated). Time of the same call: process CPU
time with --threads 1 (robust on a shared machine), wall time otherwise; the minimum over the
interleaved repeats is reported. Last line: one JSON object: the fused ratios at the largest N (float32), and
for every N and dtype plain MLE / F.cross_entropy (with the head, and the loss alone) and plain EMO / plain MLE.
`--step`: training-step time (fused loss + backward + AdamW) of a tiny LLaMA, EMO over MLE.
`--dense`: the dense-target (teacher) methods only, fp32, N=8192 by default; last line: fused over plain ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

METHODS = ("torch_ce", "plain_mle", "fused_mle", "plain_emo", "plain_emo_ours", "fused_emo", "ce_only_torch", "ce_only_mle")
DENSE_METHODS = ("plain_dense_emo", "fused_dense_emo", "plain_dense_kd", "fused_dense_kd")
LOW_PRECISION_METHODS = ("torch_ce", "plain_mle", "plain_emo_ours", "ce_only_torch", "ce_only_mle")
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def sample_labels(n: int, vocab: int, kind: str, g):
    """`uniform`: every id equally likely (nearly all targets distinct: the plain EMO path's worst case);
    `zipf`: rank r drawn with probability ~ 1/r over a random ranking of the ids, as words in text are
    (N = 1024 gives ~600 distinct targets, N = 8192 ~3100)."""
    import torch

    if kind == "uniform":
        return torch.randint(0, vocab, (n,), generator=g)
    ranks = torch.multinomial(1.0 / torch.arange(1, vocab + 1, dtype=torch.float64), n, replacement=True, generator=g)
    return torch.randperm(vocab, generator=g)[ranks]


def worker(method: str, n: int, vocab: int, hidden: int, chunk: int | None, threads: int | None,
           dtype_name: str = "fp32", labels_kind: str = "uniform") -> dict:
    import torch
    import torch.nn.functional as F

    from emotune.objectives import CostEmbedding, build_objective
    from emotune.objectives.fused import default_chunk_size, fused_loss

    if threads:
        torch.set_num_threads(threads)
    dtype = getattr(torch, DTYPES[dtype_name])
    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, hidden, generator=g).to(dtype).requires_grad_(True)
    w = (torch.randn(vocab, hidden, generator=g) * hidden**-0.5).to(dtype).requires_grad_(True)
    y = sample_labels(n, vocab, labels_kind, g)
    cost = CostEmbedding(torch.randn(vocab, hidden, generator=g))
    e_hat = cost.matrix()
    chunk = chunk or default_chunk_size(vocab)
    # the plain paths take HF-shaped [1, N+1, V] logits / [1, N+1] labels: row t predicts label t+1
    labels = torch.cat([torch.tensor([-100]), y])[None]
    pad = torch.zeros(1, hidden, dtype=dtype)
    logits_leaf = None
    if method.startswith("ce_only"):
        logits_leaf = (torch.cat([h, pad]) @ w.T).detach()[None].requires_grad_(True)

    def plain(objective):
        logits = (torch.cat([h, pad]) @ w.T)[None]
        return objective(logits, labels).loss

    def library_ce(logits):  # transformers' ForCausalLMLoss: upcast, shift the labels by padding, mean
        shift = F.pad(labels, (0, 1), value=-100)[:, 1:].reshape(-1)
        return F.cross_entropy(logits.float().view(-1, vocab), shift, ignore_index=-100)

    def original_emo():  # the official code's layout: dense one-hot, q Ê and onehot Ê, gt-detach
        logits = h @ w.T
        mle = F.cross_entropy(logits, y, reduction="none")
        q = torch.softmax(logits, dim=-1)
        one_hot = F.one_hot(y, num_classes=vocab).to(logits.dtype)
        gt_q = (q * one_hot).detach()
        q_final = q - gt_q
        p_repr = one_hot @ e_hat
        q_repr = q_final @ e_hat
        emo = 1 - (p_repr * q_repr).sum(-1)
        return (0.5 * (mle + (mle / emo.clamp_min(1e-8)).detach() * emo)).mean()

    mle_obj, emo_obj = build_objective("mle"), build_objective("emo", {}, cost)
    dense_emo, dense_kd = build_objective("emo", {"target": "teacher"}, cost), build_objective("kd_forward")
    h_t = torch.randn(n, hidden, generator=g).to(dtype) if method in DENSE_METHODS else None
    w_t = (torch.randn(vocab, hidden, generator=g) * hidden**-0.5).to(dtype) if method in DENSE_METHODS else None

    def plain_dense(objective):  # both models' logits materialised, as a trainer holding the teacher's output would
        logits = (torch.cat([h, pad]) @ w.T)[None]
        with torch.no_grad():
            teacher_logits = (torch.cat([h_t, pad]) @ w_t.T)[None]
        return objective(logits, labels, teacher_logits=teacher_logits).loss
    run = {
        "torch_ce": lambda: library_ce((torch.cat([h, pad]) @ w.T)[None]),
        "ce_only_torch": lambda: library_ce(logits_leaf),
        "ce_only_mle": lambda: mle_obj(logits_leaf, labels).loss,
        "plain_mle": lambda: plain(mle_obj),
        "fused_mle": lambda: fused_loss(h, w, y, mle_obj, chunk_size=chunk).loss,
        "plain_emo": original_emo,
        "plain_emo_ours": lambda: plain(emo_obj),
        "fused_emo": lambda: fused_loss(h, w, y, emo_obj, chunk_size=chunk).loss,
        "plain_dense_emo": lambda: plain_dense(dense_emo),
        "fused_dense_emo": lambda: fused_loss(h, w, y, dense_emo, chunk_size=chunk, teacher=(h_t, w_t, None)).loss,
        "plain_dense_kd": lambda: plain_dense(dense_kd),
        "fused_dense_kd": lambda: fused_loss(h, w, y, dense_kd, chunk_size=chunk, teacher=(h_t, w_t, None)).loss,
    }[method]

    wrt = (logits_leaf,) if logits_leaf is not None else (h, w)
    torch.autograd.grad((h[:8] @ w.T).sum(), (h, w))  # one-time BLAS / autograd start-up, outside the peak
    base = _status_kb("VmRSS")
    exact = _reset_peak()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    torch.autograd.grad(run(), wrt)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    peak_kb = _status_kb("VmHWM") - (base if exact else 0)
    # With --threads 1 the process's CPU time is the cost itself, unaffected by other jobs queueing for the
    # cores of a shared machine (wall time is not); with several threads only wall time means anything.
    return {"method": method, "n": n, "dtype": dtype_name, "peak_mb": peak_kb / 1024, "time_s": cpu if threads == 1 else wall,
            "wall_s": wall, "cpu_s": cpu, "chunk": chunk, "peak_exact": exact}


def step_benchmark(args) -> None:
    """Training-step time of a tiny LLaMA (V = --vocab) with the fused loss: EMO over MLE, interleaved."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from emotune.objectives import CostEmbedding, build_objective
    from emotune.train.fused_head import fused_causal_lm_loss

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.step_hidden, intermediate_size=args.step_hidden * 8 // 3,
                      num_hidden_layers=args.step_layers, num_attention_heads=max(args.step_hidden // 64, 1),
                      max_position_embeddings=args.step_seq, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    objectives = {"mle": build_objective("mle"), "emo": build_objective("emo", {}, CostEmbedding.frozen(model))}
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, args.vocab, (args.step_batch, args.step_seq), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    clock = time.process_time if args.threads == 1 else time.perf_counter  # 1 thread: CPU time (see worker)

    def step(objective) -> float:
        t0 = clock()
        fused_causal_lm_loss(model, batch, objective).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return clock() - t0

    times: dict[str, list[float]] = {"mle": [], "emo": []}
    for name in times:  # warm-up: optimizer state, allocator
        step(objectives[name])
    for rep in range(args.repeats):
        for name in times:
            times[name].append(step(objectives[name]))
            print(f"  rep {rep} {name}: {times[name][-1]:.2f} s", flush=True)
    med = {k: min(v) for k, v in times.items()}  # least-disturbed step of each
    n_params = sum(p.numel() for p in model.parameters())
    print(f"tiny LLaMA: {n_params / 1e6:.1f}M params, hidden {args.step_hidden}, {args.step_layers} layers, V={args.vocab}, "
          f"batch {args.step_batch}x{args.step_seq}; fused loss; AdamW step")
    print(f"step time: MLE {med['mle']:.2f} s, EMO {med['emo']:.2f} s, EMO/MLE {med['emo'] / med['mle']:.3f}")
    print(json.dumps({"step_time_emo_over_mle": round(med["emo"] / med["mle"], 4)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1024,8192", help="comma-separated token counts N")
    ap.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32 (every method), bf16 (plain ones)")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--chunk-size", type=int, default=None, help="fused chunk (default: 2^24 / V tokens)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--labels", choices=("uniform", "zipf"), default="uniform",
                    help="target ids: uniform (worst case for EMO's per-target cost columns) or zipf (text-like)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--step", action="store_true", help="instead: training-step time, tiny LLaMA, fused EMO vs MLE")
    ap.add_argument("--dense", action="store_true", help="instead: teacher-target EMO / KD, fused vs plain (fp32, N=8192)")
    # EMO adds one N x V x H' product to the LM head's three: its step overhead is that share of the head's
    # part of the step. At hidden 512 x 8 layers the head (V = 32000) is about half of the step; at
    # 256 x 4 about 70% (EMO/MLE ~1.27 there); at LLaMA-7B scale a few percent.
    ap.add_argument("--step-hidden", type=int, default=512)
    ap.add_argument("--step-layers", type=int, default=8)
    ap.add_argument("--step-batch", type=int, default=4)
    ap.add_argument("--step-seq", type=int, default=256)
    ap.add_argument("--worker", nargs=3, metavar=("METHOD", "N", "DTYPE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:
        step_benchmark(args)
        return
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.vocab, args.hidden, args.chunk_size,
                                args.threads, args.worker[2], args.labels)))
        return
    if args.dense:  # the dense methods alone, float32 (the defaults of the other modes do not apply)
        args.methods = ",".join(DENSE_METHODS) if args.methods == ",".join(METHODS) else args.methods
        args.sizes = "8192" if args.sizes == "1024,8192" else args.sizes
        args.dtypes = "fp32"
    sizes = [int(s) for s in args.sizes.split(",")]
    dtypes = args.dtypes.split(",")
    methods = args.methods.split(",")
    plan = {d: [m for m in methods if d == "fp32" or m in LOW_PRECISION_METHODS] for d in dtypes}
    # A fixed mmap threshold: every large tensor is its own mapping, returned on free, so peak RSS is exact.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    runs: dict[tuple[str, int, str], list[dict]] = {}
    print(f"V={args.vocab} H={args.hidden} loss+backward wrt (hidden, weight) (ce_only_*: wrt the logits); "
          f"dtypes {dtypes}; {args.labels} labels; CPU threads={args.threads or 'default'}; {args.repeats} interleaved repeat(s), one "
          f"process each; time = {'process CPU time (1 thread)' if args.threads == 1 else 'wall time'}")
    # Interleaved (rep -> N -> dtype -> method) so that load drifting on a shared machine hits every method alike.
    for rep in range(args.repeats):
        for n in sizes:
            for d in dtypes:
                for m in plan[d]:
                    cmd = [sys.executable, __file__, "--worker", m, str(n), d, "--vocab", str(args.vocab), "--hidden",
                           str(args.hidden)]
                    cmd += ["--chunk-size", str(args.chunk_size)] if args.chunk_size else []
                    cmd += ["--threads", str(args.threads)] if args.threads else []
                    cmd += ["--labels", args.labels]
                    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    runs.setdefault((m, n, d), []).append(r)
                    print(f"  rep {rep} N={n} {d} {m}: {r['peak_mb']:.1f} MB, cpu {r['cpu_s']:.2f} s, "
                          f"wall {r['wall_s']:.2f} s", flush=True)
    # min over repeats: on a shared machine the least-disturbed run is the best estimate of the cost itself
    rows = {k: {"peak_mb": max(r["peak_mb"] for r in v), "time_s": min(r["time_s"] for r in v)}
            for k, v in runs.items()}
    print(f"{'N':>6} {'dtype':>5} {'method':>15} {'peak MB':>10} {'time s':>8}")
    for n in sizes:
        for d in dtypes:
            for m in plan[d]:
                print(f"{n:>6} {d:>5} {m:>15} {rows[(m, n, d)]['peak_mb']:>10.1f} {rows[(m, n, d)]['time_s']:>8.2f}")
    ratio = lambda key, a, b, n, d="fp32": rows[(a, n, d)][key] / rows[(b, n, d)][key]  # noqa: E731
    headline: dict = {}
    for n in sizes:
        have = {m for m, k, d in rows if k == n and d == "fp32"}
        line = {}
        for short, key in (("mem", "peak_mb"), ("time", "time_s")):
            for a, b in (("fused_emo", "fused_mle"), ("fused_emo", "plain_emo"), ("fused_emo", "plain_emo_ours"),
                         ("fused_mle", "plain_mle"), ("fused_dense_emo", "plain_dense_emo"),
                         ("fused_dense_kd", "plain_dense_kd"), ("fused_dense_emo", "fused_dense_kd")):
                if {a, b} <= have:
                    line[f"{short}_{a}_over_{b}"] = ratio(key, a, b, n)
        if line:
            print(f"N={n} fp32 fused ratios: " + ", ".join(f"{k}={v:.3f}" for k, v in line.items()))
            headline = {"n": n, **{k: round(v, 4) for k, v in line.items()}}
    plain_line = {}
    for n in sizes:
        for d in dtypes:
            have = {m for m, k, dd in rows if k == n and dd == d}
            for a, b, label in (("plain_mle", "torch_ce", "plain_mle_over_torch_ce"),
                                ("ce_only_mle", "ce_only_torch", "loss_only_mle_over_torch_ce"),
                                ("plain_emo_ours", "plain_mle", "plain_emo_over_plain_mle")):
                if {a, b} <= have:
                    tag = "" if args.labels == "uniform" else f"_{args.labels}"
                    plain_line[f"time_{label}_{d}_n{n}{tag}"] = round(ratio("time_s", a, b, n, d), 4)
    if plain_line:
        print("plain ratios: " + ", ".join(f"{k}={v:.3f}" for k, v in plain_line.items()))
    print(json.dumps({**headline, **plain_line}))


if __name__ == "__main__":
    main()
