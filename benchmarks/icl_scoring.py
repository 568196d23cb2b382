"""Shared-prefix PPL scoring vs OpenICL-style full-prompt scoring, measured side by side in one run.

Model: a LLaMA of 8 layers, width 512, vocabulary 32000 (random weights: speed does not depend on them).
Tasks: the paper's seven ICL task shapes, built from the real templates in configs/eval/tasks/*.yaml with
8 demos each, plus MMLU 5-shot (OpenCompass mmlu_ppl prompts). Inputs are synthetic sentences with each
task's typical length in words (a word-level tokenizer trained on the spot, ~1 token per word and
punctuation mark; LLaMA's tokenizer gives somewhat more tokens per word, which favours sharing more).

    full    OpenICL's PPLInferencer loop: for each label, batches of `batch` prompts, every prompt in full
    shared  emotune's scorer: common token prefix once per test input (MMLU: hint + demos once per subject),
            then only the label suffixes

Timing (benchmarks/paired.py): rounds, each scoring every task both ways on the same prompts, full and
shared alternating in order (full first on even rounds, shared first on odd ones) after a warm-up; a
speedup is formed per round and reported as the median of the per-round speedups with its interquartile
range and the number of rounds, so load that drifts on a shared machine moves both arms alike.
Prints a table (median time per shape, speedup, whether predictions are identical, max |score difference|)
and the suite speedup two ways: the measured total over the same number of test inputs per task
(`suite_speedup`, the paper's eight tasks), and the measured time per test input weighted by each task's
real test-set size (`weighted_suite_speedup`, an estimate of the full test sets' cost), each checked
against its target (>= 3.5 on a quiet machine). Ends with one JSON line: {"suite_speedup": {median, q1,
q3, iqr, rounds}, "identical_predictions": ..., ...}.

    python benchmarks/icl_scoring.py [--examples 8] [--batch 8] [--rounds 5] [--threads 1 --clock cpu]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import paired  # noqa: E402  (benchmarks/paired.py)

from emotune.eval.icl import mmlu  # noqa: E402
from emotune.eval.icl.scorer import argmin_first, naive_token_nlls, rule_scores, shared_token_nlls  # noqa: E402
from emotune.tasks.files import load_task  # noqa: E402

# typical input length in words of each task's test rows (rounded corpus means)
WORDS = {"tweet_eval": 16, "sst2": 19, "trec": 10, "subj": 24, "cr": 18, "rotten_tomatoes": 21, "ag_news": 38}
# test-set sizes of the paper's suite: the suite figure weights each task's measured time per test input by
# these (the cost of running the whole suite), next to the unweighted figure (same number of inputs per task)
TEST_SIZES = {"tweet_eval": 1421, "sst2": 1821, "trec": 500, "subj": 2000, "cr": 753, "rotten_tomatoes": 1066,
              "ag_news": 7600, "mmlu": 14042}


def make_lexicon(rng: random.Random, n: int = 4000) -> list[str]:
    syll = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]
    return list({"".join(rng.choice(syll) for _ in range(rng.randint(1, 3))) for _ in range(n)})


def sentence(rng, lexicon, mean_words):
    n = max(3, int(rng.gauss(mean_words, mean_words / 4)))
    return " ".join(rng.choice(lexicon) for _ in range(n)) + " ."


def build_tokenizer(corpus: list[str], vocab: int = 32000):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    trainer = trainers.WordLevelTrainer(vocab_size=vocab, special_tokens=["<unk>", "<s>", "</s>"])
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def icl_prompts(task, rng, lexicon, n_examples):
    out = []
    for _ in range(n_examples):
        demos = [task.fill(rng.choice(task.labels), {"text": sentence(rng, lexicon, WORDS[task.name])})
                 for _ in range(task.ice_num)]
        ice = "\n".join(demos) + "\n"
        row = {"text": sentence(rng, lexicon, WORDS[task.name])}
        out.append([task.prompt(label, row, ice) for label in task.labels])  # as the evaluator renders it
    return out


def mmlu_prompts(rng, lexicon, n_examples):
    def row():
        return {"question": sentence(rng, lexicon, 40), "choices": [sentence(rng, lexicon, 5) for _ in range(4)],
                "answer": rng.randrange(4)}

    dev = [row() for _ in range(5)]
    return [mmlu.candidates("high_school_physics", dev, row(), "row") for _ in range(n_examples)]


CLOCK = time.perf_counter


def time_full(model, groups, batch):
    """OpenICL's order: for each label, batches over the test inputs."""
    t = CLOCK()
    per_label = [naive_token_nlls(model, [g[j] for g in groups], batch) for j in range(len(groups[0]))]
    seconds = CLOCK() - t
    return seconds, [[per_label[j][i] for j in range(len(groups[0]))] for i in range(len(groups))]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=8, help="test inputs per task")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds: every task scored both ways once per round")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: this process's CPU time (with --threads 1, robust to other load on a shared machine)")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=32000)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    rng = random.Random(0)
    lexicon = make_lexicon(rng)
    names = list(WORDS)
    tasks = [load_task(n) for n in names]
    prompts = {t.name: icl_prompts(t, rng, lexicon, args.examples) for t in tasks}
    prompts["mmlu"] = mmlu_prompts(rng, lexicon, args.examples)
    tok = build_tokenizer([p for g in prompts.values() for c in g for p in c])

    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    ffn = int(args.width * 8 / 3) // 64 * 64  # LLaMA's 8/3 ratio, rounded to 64
    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.width, intermediate_size=ffn,
                      num_hidden_layers=args.layers, num_attention_heads=args.width // 64,
                      num_key_value_heads=args.width // 64, max_position_embeddings=4096)
    model = LlamaForCausalLM(cfg).eval()
    print(f"model: LLaMA {args.layers} layers, width {args.width}, vocab {args.vocab}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, fp32, {torch.get_num_threads()} threads, "
          f"device cpu; {args.examples} test inputs per task, batch {args.batch}; {args.clock} clock, "
          f"{args.rounds} paired rounds after a warm-up, median [IQR] of per-round speedups")
    groups = {k: [[tok(p)["input_ids"] for p in c] for c in v] for k, v in prompts.items()}
    # warm-up (allocator, kernels), and the scores compared once: both arms are deterministic
    scores = {}
    for name, g in groups.items():
        _, nll_full = time_full(model, g, args.batch)
        nll_shared = shared_token_nlls(model, g, args.batch)
        scores[name] = ([rule_scores(c, n) for c, n in zip(g, nll_full)], [rule_scores(c, n) for c, n in zip(g, nll_shared)])

    arms = {}
    for name, g in groups.items():
        arms[f"full:{name}"] = lambda g=g: time_full(model, g, args.batch)
        arms[f"shared:{name}"] = lambda g=g: shared_token_nlls(model, g, args.batch)
    # per round: for each task, full then shared (reversed every other round by run_rounds' order flip)
    times = paired.run_rounds(arms, args.rounds, warmup=0, clock=CLOCK)

    header = (f"{'task':<16}{'labels':>7}{'tokens':>8}{'full s':>9}{'shared s':>10}{'speedup [IQR]':>20}{'same pred':>10}"
              f"{'max |dscore|':>14}")
    print(header)
    print("-" * len(header))
    identical = True
    for name, g in groups.items():
        s_full, s_shared = scores[name]
        same = [argmin_first(a) for a in s_full] == [argmin_first(b) for b in s_shared]
        diff = float(np.max(np.abs(np.array(s_full) - np.array(s_shared))))
        identical &= same
        st = paired.summarize(paired.round_ratios(times, f"full:{name}", f"shared:{name}"))
        mean_tokens = np.mean([len(s) for c in g for s in c])
        print(f"{name:<16}{len(g[0]):>7}{mean_tokens:>8.0f}{paired.median(times['full:' + name]):>9.2f}"
              f"{paired.median(times['shared:' + name]):>10.2f}{st['median']:>8.2f}x [{st['q1']:.2f}-{st['q3']:.2f}]"
              f"{str(same):>10}{diff:>14.2e}")
    print("-" * len(header))

    def suite(names, weighted):
        """Per-round suite speedup: summed full time over summed shared time per test input, optionally weighted
        by each task's real test-set size."""
        w = {n: (TEST_SIZES[n] if weighted else 1) / len(groups[n]) for n in names}
        ratios = []
        for r in range(args.rounds):
            full = sum(w[n] * times[f"full:{n}"][r] for n in names)
            shared = sum(w[n] * times[f"shared:{n}"][r] for n in names)
            ratios.append(full / shared)
        return paired.summarize(ratios)

    icl = [n for n in groups if n != "mmlu"]
    paper = list(groups)
    result = {"suite_speedup": suite(paper, False), "identical_predictions": bool(identical),
              "icl_suite_speedup": suite(icl, False), "weighted_suite_speedup": suite(paper, True),
              "weighted_icl_suite_speedup": suite(icl, True)}
    # The floor: shared-prefix scoring never does more work than full scoring (speedup >= 1); target >= 3.5.
    print(paired.check("suite_speedup (paper's 8 tasks, same inputs per task)", result["suite_speedup"], 1.0, ">= 3.5"))
    print(paired.check("icl_suite_speedup (7 ICL tasks)", result["icl_suite_speedup"], 1.0))
    print(paired.check("weighted_suite_speedup (by real test-set sizes)", result["weighted_suite_speedup"], 1.0))
    print(paired.check("weighted_icl_suite_speedup", result["weighted_icl_suite_speedup"], 1.0))
    print(f"identical predictions on every task: {identical}")
    # Headline: the measured total time over the same inputs per task (no extrapolation); the
    # test-size-weighted figures estimate the cost of the full test sets from the same measurements.
    print(json.dumps(result))


if __name__ == "__main__":
    main()
