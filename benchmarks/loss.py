"""Peak memory and time of loss + backward: plain vs fused, MLE and EMO, and our plain loss vs the library's
F.cross_entropy, side by side in one run.

    .venv/bin/python benchmarks/loss.py --threads 1           # N in {1024, 8192}, V=32000, H=512, fp32 + bf16
    .venv/bin/python benchmarks/loss.py --sizes 1024 --rounds 3 --dtypes fp32 --no-memory   # quick look
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
Time: for each (N, dtype) one process builds every method on the same inputs and runs them in rounds
(benchmarks/paired.py): every method once per round, the order reversed every other round, after one
warm-up round; each ratio is formed per round and reported as the median with its interquartile range
and the number of rounds — arms measured seconds apart, so load that drifts on a shared machine moves
both sides of a ratio alike. Clock: the process's user CPU time with --threads 1 (the kernel's page-fault time
is left out: see `user_cpu_time`), wall time otherwise.
Memory: each (method, N, dtype) once in its own process, so its peak RSS is its own: peak = VmHWM after
one loss+backward minus VmRSS before it (inputs already allocated); deterministic, so not repeated.
Before the JSON line each ratio is printed with the floor or target it is held against; a median below
its physical floor is flagged as a measurement error. Fused EMO / fused MLE is 4/3 in FLOPs (one N x V x H'
product more than MLE's three), but its time floor is 1 + t(that product) / t(fused MLE), lower than 4/3 as
MLE's passes over its logits are not repeated: the product runs as an extra arm (`extra_product`) in the same
rounds and the floor is the median of its per-round ratio.
Last line: one JSON object: the fused ratios at the largest N (float32), and for every N and dtype plain
MLE / F.cross_entropy (with the head, and the loss alone) and plain EMO / plain MLE; each time ratio as
{median, q1, q3, iqr, rounds}. `benchmarks/stability.py` reruns it under load and compares.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import paired  # noqa: E402  (benchmarks/paired.py, beside this file)

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


def build_arms(methods, n: int, vocab: int, hidden: int, chunk: int | None, dtype_name: str = "fp32",
               labels_kind: str = "uniform") -> dict:
    """method -> a callable doing one loss + backward (the gradient w.r.t. hidden and weight; ce_only_*: w.r.t.
    the logits), all on the same inputs, built once."""
    import torch
    import torch.nn.functional as F

    from emotune.objectives import CostEmbedding, build_objective
    from emotune.objectives.fused import default_chunk_size, fused_loss

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
    if any(m.startswith("ce_only") for m in methods):
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
    dense = any(m in DENSE_METHODS for m in methods)
    h_t = torch.randn(n, hidden, generator=g).to(dtype) if dense else None
    w_t = (torch.randn(vocab, hidden, generator=g) * hidden**-0.5).to(dtype) if dense else None

    def plain_dense(objective):  # both models' logits materialised, as a trainer holding the teacher's output would
        logits = (torch.cat([h, pad]) @ w.T)[None]
        with torch.no_grad():
            teacher_logits = (torch.cat([h_t, pad]) @ w_t.T)[None]
        return objective(logits, labels, teacher_logits=teacher_logits).loss
    floor_buf = torch.empty(min(chunk, n), vocab) if "extra_product" in methods else None

    def extra_product():  # EMO's one extra N x V x H' product, chunk by chunk as the fused loss makes it
        for s in range(0, n, chunk):
            torch.mm(e_hat[y[s:s + chunk]], e_hat.T, out=floor_buf[: min(chunk, n - s)])

    losses = {
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
    }

    def arm(method):
        if method == "extra_product":
            return extra_product
        wrt = (logits_leaf,) if method.startswith("ce_only") else (h, w)
        return lambda: torch.autograd.grad(losses[method](), wrt)

    torch.autograd.grad((h[:8] @ w.T).sum(), (h, w))  # one-time BLAS / autograd start-up
    return {m: arm(m) for m in methods}


def memory_worker(method: str, n: int, args) -> dict:
    """Peak RSS of one loss + backward, alone in this process: deterministic, so measured once."""
    import torch

    torch.set_num_threads(args.threads or torch.get_num_threads())
    run = build_arms([method], n, args.vocab, args.hidden, args.chunk_size, args.worker_dtype, args.labels)[method]
    base = _status_kb("VmRSS")
    exact = _reset_peak()
    run()
    peak_kb = _status_kb("VmHWM") - (base if exact else 0)
    return {"method": method, "n": n, "peak_mb": peak_kb / 1024, "peak_exact": exact}


def user_cpu_time() -> float:
    """The process's user CPU time. Not `time.process_time`, which adds the kernel's time: even with freed memory
    kept (time_env), glibc's heap now and then grows for an [N, V] buffer instead of reusing a freed one, and the
    first touch of ~1 GB of fresh pages added ~3 s of system time to one `F.cross_entropy` call of 5 s
    (240k minor faults; the next call, none), which moved that arm's ratio from ~1.0 to ~0.65 at random."""
    try:
        import resource
    except ImportError:  # not a Unix: the CPU time the platform gives
        return time.process_time()
    return resource.getrusage(resource.RUSAGE_SELF).ru_utime


def _log_stderr(line: str) -> None:  # the worker's stdout carries only its JSON line
    print(line, file=sys.stderr, flush=True)


def timing_worker(methods: list[str], n: int, args) -> dict:
    """Every method on the same inputs, interleaved in rounds (benchmarks/paired.py): method -> seconds per round."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    arms = build_arms(methods, n, args.vocab, args.hidden, args.chunk_size, args.worker_dtype, args.labels)
    # With one thread the process's CPU time is the cost itself, not the time spent queueing for a core
    # behind other jobs; with several threads only wall time means anything.
    clock = user_cpu_time if args.threads == 1 else time.perf_counter
    return paired.run_rounds(arms, args.rounds, warmup=1, clock=clock, log=_log_stderr)


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

    clock = user_cpu_time if args.threads == 1 else time.perf_counter  # 1 thread: CPU time (see timing_worker)

    def step(objective) -> None:
        fused_causal_lm_loss(model, batch, objective).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    arms = {name: (lambda o=obj: step(o)) for name, obj in objectives.items()}
    times = paired.run_rounds(arms, args.rounds, warmup=1, clock=clock, log=print)  # warm-up: optimizer state
    stats = paired.summarize(paired.round_ratios(times, "emo", "mle"))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"tiny LLaMA: {n_params / 1e6:.1f}M params, hidden {args.step_hidden}, {args.step_layers} layers, V={args.vocab}, "
          f"batch {args.step_batch}x{args.step_seq}; fused loss; AdamW step")
    print(f"step time: MLE {paired.median(times['mle']):.2f} s, EMO {paired.median(times['emo']):.2f} s (medians)")
    print(paired.check("step_time_emo_over_mle", stats))
    print(json.dumps({"step_time_emo_over_mle": stats}))


# (key, numerator, denominator, floor, target): the ratios each run reports, with what they are held against.
# EMO's fused loss does one more N x V x d product (the cost rows) than MLE's three (logits, grad_h, grad_W):
# 4/3 in FLOPs. In time the floor is lower, since MLE's own passes over its logits (max, exp, sum: ~12% of its
# time on this CPU) are not repeated by that product: everything MLE does plus the product alone, i.e.
# 1 + t(product) / t(MLE), with the product timed as a third arm in the same rounds ("measured" below).
# A median under that is a disturbed measurement, not a property of the code.
FUSED_RATIOS = (("fused_emo_over_fused_mle", "fused_emo", "fused_mle", "measured", "<= 1.40"),
                ("fused_emo_over_plain_emo", "fused_emo", "plain_emo", None, None),
                ("fused_emo_over_plain_emo_ours", "fused_emo", "plain_emo_ours", None, None),
                ("fused_mle_over_plain_mle", "fused_mle", "plain_mle", None, None),
                ("fused_dense_emo_over_plain_dense_emo", "fused_dense_emo", "plain_dense_emo", None, None),
                ("fused_dense_kd_over_plain_dense_kd", "fused_dense_kd", "plain_dense_kd", None, None),
                ("fused_dense_emo_over_fused_dense_kd", "fused_dense_emo", "fused_dense_kd", None, None))
PLAIN_RATIOS = (("plain_mle_over_torch_ce", "plain_mle", "torch_ce", {"fp32": "<= 1.10"}),
                ("loss_only_mle_over_torch_ce", "ce_only_mle", "ce_only_torch", {}),
                ("plain_emo_over_plain_mle", "plain_emo_ours", "plain_mle", {"fp32": "<= 1.50"}))
MEMORY_TARGETS = {"fused_emo_over_plain_emo": "<= 0.05"}


def _worker_cmd(args, *extra: str) -> list[str]:
    cmd = [sys.executable, __file__, *extra, "--vocab", str(args.vocab), "--hidden", str(args.hidden),
           "--labels", args.labels, "--rounds", str(args.rounds)]
    cmd += ["--chunk-size", str(args.chunk_size)] if args.chunk_size else []
    cmd += ["--threads", str(args.threads)] if args.threads else []
    return cmd


def _run_json(cmd: list[str], env=None) -> dict:
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1024,8192", help="comma-separated token counts N")
    ap.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32 (every method), bf16 (plain ones)")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--chunk-size", type=int, default=None, help="fused chunk (default: 2^24 / V tokens)")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (every method once per round, after one warm-up round)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--labels", choices=("uniform", "zipf"), default="uniform",
                    help="target ids: uniform (worst case for EMO's per-target cost columns) or zipf (text-like)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--no-memory", action="store_true", help="time ratios only (skip the one-process-per-method peaks)")
    # The original code's layout takes ~3x fused EMO's time at N = 8192 (a third of a round) and its time
    # ratio has no target; its memory (the 0.05 target) is measured whatever this says.
    ap.add_argument("--untimed", default="plain_emo", help="methods measured for memory only (comma-separated; '' for none)")
    ap.add_argument("--step", action="store_true", help="instead: training-step time, tiny LLaMA, fused EMO vs MLE")
    ap.add_argument("--dense", action="store_true", help="instead: teacher-target EMO / KD, fused vs plain (fp32, N=8192)")
    # EMO adds one N x V x H' product to the LM head's three: its step overhead is that share of the head's
    # part of the step. At hidden 512 x 8 layers the head (V = 32000) is about half of the step; at
    # 256 x 4 about 70% (EMO/MLE ~1.27 there); at LLaMA-7B scale a few percent.
    ap.add_argument("--step-hidden", type=int, default=512)
    ap.add_argument("--step-layers", type=int, default=8)
    ap.add_argument("--step-batch", type=int, default=4)
    ap.add_argument("--step-seq", type=int, default=256)
    ap.add_argument("--memory-worker", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--timing-worker", nargs=2, metavar=("METHODS", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--worker-dtype", default="fp32", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if args.step:
        step_benchmark(args)
        return
    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker[0], int(args.memory_worker[1]), args)))
        return
    if args.timing_worker:
        print(json.dumps(timing_worker(args.timing_worker[0].split(","), int(args.timing_worker[1]), args)))
        return
    if args.dense:  # the dense methods alone, float32 (the defaults of the other modes do not apply)
        args.methods = ",".join(DENSE_METHODS) if args.methods == ",".join(METHODS) else args.methods
        args.sizes = "8192" if args.sizes == "1024,8192" else args.sizes
        args.dtypes = "fp32"
    sizes = [int(s) for s in args.sizes.split(",")]
    dtypes = args.dtypes.split(",")
    methods = args.methods.split(",")
    plan = {d: [m for m in methods if d == "fp32" or m in LOW_PRECISION_METHODS] for d in dtypes}
    untimed = set(filter(None, args.untimed.split(",")))
    timed = {d: [m for m in plan[d] if m not in untimed] for d in dtypes}
    clock = "process user CPU time (1 thread)" if args.threads == 1 else "wall time"
    print(f"V={args.vocab} H={args.hidden} loss+backward wrt (hidden, weight) (ce_only_*: wrt the logits); dtypes {dtypes}; "
          f"{args.labels} labels; CPU threads={args.threads or 'default'}; time: {clock}, every method once per round on "
          f"the same inputs in one process, order reversed every other round, {args.rounds} rounds after a warm-up; "
          f"ratios = median [IQR] of per-round ratios; memory: peak RSS, one process per method", flush=True)
    times: dict[tuple[int, str], dict[str, list[float]]] = {}
    peaks: dict[tuple[str, int, str], float] = {}
    # A fixed mmap threshold: every large tensor is its own mapping, returned on free, so peak RSS is exact.
    mem_env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    # Timing: no mmap and no trimming, so a freed [N, V] buffer is reused by the next call as a caching
    # allocator (a GPU's) would. Otherwise every call maps fresh pages, and their first-touch faults
    # (0.5-2 s per GB here, varying with the kernel's memory state) would be timed instead of the loss.
    time_env = dict(os.environ, MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_=str(1 << 40))
    if {"fused_emo", "fused_mle"} <= set(timed.get("fp32", ())):
        timed["fp32"] = timed["fp32"] + ["extra_product"]  # the time floor of fused EMO / fused MLE (FUSED_RATIOS)
    for n in sizes:
        for d in dtypes:
            print(f"N={n} {d}: timing {','.join(timed[d])}", flush=True)
            times[(n, d)] = _run_json(_worker_cmd(args, "--timing-worker", ",".join(timed[d]), str(n), "--worker-dtype", d),
                                      env=time_env) if timed[d] else {}
            if args.no_memory:
                continue
            for m in plan[d]:
                r = _run_json(_worker_cmd(args, "--memory-worker", m, str(n), "--worker-dtype", d), env=mem_env)
                peaks[(m, n, d)] = r["peak_mb"]
    print(f"{'N':>6} {'dtype':>5} {'method':>15} {'peak MB':>10} {'median s':>9}")
    for n in sizes:
        for d in dtypes:
            for m in plan[d]:
                peak = f"{peaks[(m, n, d)]:>10.1f}" if (m, n, d) in peaks else f"{'-':>10}"
                t = f"{paired.median(times[(n, d)][m]):>9.3f}" if m in times[(n, d)] else f"{'-':>9}"
                print(f"{n:>6} {d:>5} {m:>15} {peak} {t}")
    result: dict = {"rounds": args.rounds, "labels": args.labels}
    n = max(sizes)  # the fused ratios at the largest N, float32
    if "fp32" in dtypes:
        result["n"] = n
        have = set(times[(n, "fp32")])
        for key, a, b, floor, target in FUSED_RATIOS:
            if {a, b} <= have:
                stats = paired.summarize(paired.round_ratios(times[(n, "fp32")], a, b))
                if floor == "measured":
                    floor = paired.summarize(paired.round_ratios(times[(n, "fp32")], [b, "extra_product"], b))
                    print(f"time floor of {key} (N={n} fp32): (MLE + the extra product alone) / MLE = median "
                          f"{floor['median']:.3f} [IQR {floor['q1']:.3f}-{floor['q3']:.3f}]; in FLOPs 4/3")
                    result[f"time_floor_{key}"] = floor
                    floor = floor["median"]
                print(paired.check(f"time_{key} (N={n} fp32)", stats, floor, target))
                result[f"time_{key}"] = stats
            if (a, n, "fp32") in peaks and (b, n, "fp32") in peaks:
                mem = peaks[(a, n, "fp32")] / peaks[(b, n, "fp32")]
                target = MEMORY_TARGETS.get(key)
                ok = "" if not target else f"; target {target} {'met' if mem <= float(target.split()[1]) else 'NOT MET'}"
                print(f"mem_{key} (N={n} fp32): {mem:.4f}{ok}")
                result[f"mem_{key}"] = round(mem, 4)
    tag = "" if args.labels == "uniform" else f"_{args.labels}"
    for n in sizes:
        for d in dtypes:
            have = set(times[(n, d)])
            for label, a, b, targets in PLAIN_RATIOS:
                if {a, b} <= have:
                    key = f"time_{label}_{d}_n{n}{tag}"
                    stats = paired.summarize(paired.round_ratios(times[(n, d)], a, b))
                    print(paired.check(key, stats, target=targets.get(d)))
                    result[key] = stats
    print(json.dumps(result))


if __name__ == "__main__":
    main()
