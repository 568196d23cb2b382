"""Shared builders for the instruction-following tests (no tests here): a tiny LLaMA instruction-tuned on
the spot with the training stage's own tokenisation, a slice of AlpacaEval-like instructions, and tiny
judges whose verdicts are known in advance:

- `constant_judge`: every position's next-token distribution is the same (all token embeddings equal,
  attention and MLP outputs zeroed) and puts its mass on the tokens of one verdict string, so it gives
  that verdict whatever it reads: with the responses swapped it still says "the first", which the
  position swap must turn into a tie;
- `trained_judge`: a tiny LLaMA trained (~80 steps) on the plain format to answer " A" or " B" for the
  response holding a marker word, wherever that response stands, followed by EOS;
- `RuleJudge`: an exact causal LM for any format whose verdict depends on the pair and on the order
  (`rule_verdict`), with `rule_pairs` giving a win, a loss, a real tie and a position-flip tie in turn; run as
  a script, this file is a judge command for the scheduled pairwise job (`_rule_judge_command`).
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch
from tiny_models import tiny_llama
from train_builders import alpaca_rows, corpus_lines, make_tiny_llama, make_tokenizer

MARKER = "good"


def instruct_rows(n: int, seed: int = 0) -> list[dict]:
    """AlpacaEval-shaped rows: instruction, a reference output, its generator and the source subset."""
    rows = []
    for i, r in enumerate(alpaca_rows(n, seed)):
        rows.append({"instruction": f"{r['instruction']} ({i})", "output": r["output"],
                     "generator": "text_davinci_003", "dataset": "helpful_base" if i % 2 else "vicuna"})
    return rows


def tuned_model(path: Path, steps: int = 80, seed: int = 0):
    """A tiny LLaMA + tokenizer, instruction-tuned briefly on Alpaca rows (emotune.train.data's masking)."""
    from emotune.train.data import tokenize_instruction

    tok = make_tokenizer(path)
    model = make_tiny_llama(path, tok, seed=seed)
    data = [tokenize_instruction(tok, r["instruction"], r["input"], r["output"], 200) for r in alpaca_rows(32, 1)]
    assert all(any(t != -100 for t in y) for _, y, _ in data), "a response was cut away: raise max_length"
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(seed)
    model.train()
    for step in range(steps):
        batch = [data[(step * 8 + k) % len(data)] for k in range(8)]
        width = max(len(b[0]) for b in batch)
        ids = torch.full((8, width), tok.pad_token_id)
        labels = torch.full((8, width), -100)
        for i, (x, y, _) in enumerate(batch):
            ids[i, : len(x)], labels[i, : len(y)] = torch.tensor(x), torch.tensor(y)
        loss = model(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().save_pretrained(str(path), safe_serialization=True)
    return model, tok


def _llama(tok, hidden: int, layers: int, seed: int):
    return tiny_llama(len(tok), seed=seed, hidden=hidden, layers=layers, kv_heads=4, bos=tok.bos_token_id,
                      eos=tok.eos_token_id, pad=tok.pad_token_id)


def constant_judge(path: Path, tok, verdict_text: str, boost: float = 20.0):
    """A judge that always gives `verdict_text` (see the module docstring), saved with `tok`."""
    model = _llama(tok, 32, 1, 0)
    favoured = tok(verdict_text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, 0] = 1.0  # every token the same: the input is not seen
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        model.lm_head.weight[favoured, 0] = boost / model.config.hidden_size ** 0.5
    model.save_pretrained(str(path), safe_serialization=True)
    tok.save_pretrained(str(path))
    return model


def _judge_example(fmt, tok, rng, lines, instructions):
    inst = rng.choice(instructions)
    win = f"{MARKER} " * rng.randint(1, 3) + rng.choice(lines)[:30]
    lose = rng.choice(lines)[:40]
    first, second, verdict = (win, lose, " A") if rng.random() < 0.5 else (lose, win, " B")
    prompt = tok(fmt.prompt(inst, first, second))["input_ids"]
    answer = tok(verdict, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return prompt, answer


def trained_judge(path: Path, tok, steps: int = 90, seed: int = 0):
    """A plain-format judge preferring the response with MARKER in it (see the module docstring)."""
    from emotune.eval.instruct.formats import FORMATS

    fmt, rng = FORMATS["plain"], random.Random(seed)
    lines, instructions = corpus_lines(200, 5), [r["instruction"] for r in alpaca_rows(50, 3)]
    model = _llama(tok, 64, 2, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        batch = [_judge_example(fmt, tok, rng, lines, instructions) for _ in range(16)]
        width = max(len(p) + len(a) for p, a in batch)
        ids = torch.full((16, width), tok.pad_token_id)
        labels = torch.full((16, width), -100)
        for i, (p, a) in enumerate(batch):
            ids[i, : len(p) + len(a)] = torch.tensor(p + a)
            labels[i, len(p) : len(p) + len(a)] = torch.tensor(a)
        loss = model(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().save_pretrained(str(path), safe_serialization=True)
    tok.save_pretrained(str(path))
    return model


def outputs_with_marker(rows: list[dict], generator: str, marked: bool, seed: int = 0) -> list[dict]:
    """An outputs list for `rows`: responses with (or without) the marker word the trained judge prefers."""
    rng, lines = random.Random(seed), corpus_lines(50, seed + 11)
    out = []
    for r in rows:
        text = rng.choice(lines)[:30]
        out.append({"instruction": r["instruction"], "output": f"{MARKER} {text}" if marked else text,
                    "generator": generator, "dataset": r["dataset"]})
    return out


# ------------------------------------------------ a judge that follows a rule: verdicts depend on the pair and order

# where each format's prompt ends, and how its two responses are found in it (the formats' own prompt texts)
_PROMPT_END = {"plain": "### Verdict:", "pandalm": "### Evaluation:\n", "autoj": "[/INST]"}
_RESPONSES = {
    "plain": r"### Response A:\n(.*)\n\n### Response B:\n(.*)\n\n### Verdict:$",
    "pandalm": r"### Response 1:\n(.*)\n\n### Response 2:\n(.*)\n\n### Evaluation:\n$",
    "autoj": r"\[Response 1\]: (.*)\n\*\*\*\n\[Response 2\]: (.*)\n\*\*\*\n\[END DATA\].*\[/INST\]$",
}


def rule_verdict(first: str, second: str) -> str:
    """The rule: the response holding MARKER when only one does; a tie when both do; when neither does,
    "first" (a position bias, which judging both orders must turn into a tie)."""
    a, b = MARKER in first.split(), MARKER in second.split()
    return "first" if a and not b else "second" if b and not a else "tie" if a else "first"


def rule_outcome(a: str, b: str) -> tuple[str, str, str]:
    """(verdict with A first, verdict with B first, A's outcome) under rule_verdict, worked out by hand."""
    ab, ba = rule_verdict(a, b), rule_verdict(b, a)
    return ab, ba, {("first", "second"): "win", ("second", "first"): "lose"}.get((ab, ba), "tie")


def rule_answer(fmt_name: str, verdict: str, critique: bool) -> str:
    """What the rule judge writes after the prompt: the format's verdict string, or (critique) a whole answer
    in the judge's own shape (Auto-J: a critique, then its decision sentence; PandaLM: verdict, reason, reference)."""
    from emotune.eval.instruct.formats import FORMATS

    if not critique:
        return FORMATS[fmt_name].continuations[verdict]
    if fmt_name == "autoj":
        said = {"first": "Response 1", "second": "Response 2", "tie": "Tie"}[verdict]
        return f" Response 1 is short. Response 2 is short too.\n\nSo, the final decision is {said}."
    if fmt_name == "pandalm":
        return FORMATS["pandalm"].continuations[verdict] + "\n\n### Reason: the word.\n\n### Reference: none"
    return FORMATS[fmt_name].continuations[verdict]


class RuleJudge(torch.nn.Module):
    """A causal LM, deterministic and exact, that reads a judge prompt of format `fmt_name` and writes
    rule_answer for rule_verdict of the two responses in it, then EOS. It writes the answer's tokens as a judge
    fine-tuned the way PandaLM was saw them in training (PandaLM's core/datasets.py tokenises prompt + answer
    as one text and learns the tokens past the prompt's own tokenisation): at each position after the prompt it
    puts 1 - 1e-6 on the next of those tokens while the text so far follows them, and is uniform elsewhere.
    It reads text (decodes the prefix, finds the two responses), so it knows nothing of how the evaluator
    builds its sequences: a verdict scored with other tokens gets probability ~1e-6 per token.

    Serves both of the judge's paths: `next_token_logprobs` (likelihood mode, through token_nlls) and a
    Hugging Face-style `forward` with a cache of the ids seen so far (generate mode, greedy)."""

    def __init__(self, tokenizer, fmt_name: str, critique: bool = False):
        super().__init__()
        self.tok, self.fmt, self.critique = tokenizer, fmt_name, critique
        self.vocab = len(tokenizer)
        self.device = torch.device("cpu")
        self.generation_config = None

    def _text(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def _answer_ids(self, ids: list[int]) -> tuple[int, list[int]] | None:
        """(the position where the prompt ends, the answer's tokens + EOS), or None while no prompt is complete."""
        import re

        marker = _PROMPT_END[self.fmt]
        if marker not in self._text(ids):
            return None
        lo, hi = 0, len(ids) - 1  # the first prefix that holds the marker (monotone in the prefix length)
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if marker in self._text(ids[: mid + 1]) else (mid + 1, hi)
        text = self._text(ids[: lo + 1])
        m = re.search(_RESPONSES[self.fmt], text, re.S)
        if m is None:
            return None
        answer = rule_answer(self.fmt, rule_verdict(m.group(1), m.group(2)), self.critique)
        whole = self.tok(text + answer)["input_ids"]
        return lo, whole[len(self.tok(text)["input_ids"]):] + [self.tok.eos_token_id]

    def _row(self, ids: list[int], positions) -> torch.Tensor:
        """[len(positions), vocab] log-probs of the token after ids[: t + 1] for each t."""
        found = self._answer_ids(ids)
        out = torch.full((len(positions), self.vocab), -math.log(self.vocab))
        for k, t in enumerate(positions):
            if found is None or t < found[0]:
                continue
            start, answer = found
            done = ids[start + 1 : t + 1]
            if len(done) < len(answer) and answer[: len(done)] == done:  # still on the answer
                out[k] = math.log(1e-6 / (self.vocab - 1))
                out[k, answer[len(done)]] = math.log(1 - 1e-6)
        return out

    def next_token_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Right-padded rows (token_nlls): [B, T, vocab]."""
        out = torch.zeros(*input_ids.shape, self.vocab)
        for r in range(input_ids.shape[0]):
            n = int(attention_mask[r].sum())
            out[r, :n] = self._row(input_ids[r, :n].tolist(), range(n))
        return out

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=True, **_):
        """Left-padded rows (the generation sampler): the cache is the real ids seen so far, per row."""
        from types import SimpleNamespace

        rows = []
        for r in range(input_ids.shape[0]):
            new = input_ids[r].tolist()
            if past_key_values is None:
                new = [t for t, m in zip(new, attention_mask[r].tolist()) if m]
            rows.append((past_key_values[r] if past_key_values is not None else []) + new)
        logits = torch.stack([self._row(ids, [len(ids) - 1]) for ids in rows])
        return SimpleNamespace(logits=logits, past_key_values=rows)


def rule_pairs(n: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Two outputs lists over instruct_rows(n) cycling through (A marked, B marked) = (1,0) (0,1) (1,1) (0,0):
    a win, a loss, a real tie and a position-flip tie for the rule judge, in turn."""
    rng, lines = random.Random(seed), corpus_lines(60, seed + 7)
    a, b = [], []
    for i, r in enumerate(instruct_rows(n)):
        marks = [(1, 0), (0, 1), (1, 1), (0, 0)][i % 4]
        for side, mark, name in ((a, marks[0], "side-a"), (b, marks[1], "side-b")):
            text = rng.choice(lines)[:30].strip()
            side.append({"instruction": r["instruction"], "output": f"{MARKER} {text}" if mark else text,
                         "generator": name, "dataset": r["dataset"]})
    return a, b


def _rule_judge_command(argv: list[str]) -> int:
    """`python tests/instruct_builders.py A.json B.json JUDGE_DIR FORMAT OUT TAG [key=value ...]`: a
    judge command for the scheduled pairwise job (its `judge_command`), judging with RuleJudge (the
    tokenizer of JUDGE_DIR) through emotune's own comparison, and noting its TAG and CUDA_VISIBLE_DEVICES
    in OUT/pairwise.json, so a test can tell which pair's command ran where."""
    import os

    from transformers import AutoTokenizer

    from emotune.eval.instruct.outputs import read_outputs
    from emotune.eval.instruct.pairwise import compare, write_result

    a, b, judge, fmt, out, tag = argv[:6]
    tok = AutoTokenizer.from_pretrained(judge)
    opts = {"judge_mode": "likelihood", "bootstrap": 50}
    result = compare(read_outputs(a), read_outputs(b), a, b, judge, fmt, opts, loaded=(RuleJudge(tok, fmt), tok))
    result["ran"] = {"tag": tag, "devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "args": argv[6:]}
    write_result(Path(out) / "pairwise.json", result)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_rule_judge_command(sys.argv[1:]))
