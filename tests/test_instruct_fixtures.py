"""Shared builders for the instruction-following tests (no tests here): a tiny LLaMA instruction-tuned on
the spot with the training stage's own tokenisation, a slice of AlpacaEval-like instructions, and tiny
judges whose verdicts are known in advance:

- `constant_judge`: every position's next-token distribution is the same (all token embeddings equal,
  attention and MLP outputs zeroed) and puts its mass on the tokens of one verdict string, so it gives
  that verdict whatever it reads: with the responses swapped it still says "the first", which the
  position swap must turn into a tie;
- `trained_judge`: a tiny LLaMA trained (~80 steps) on the plain format to answer " A" or " B" for the
  response holding a marker word, wherever that response stands, followed by EOS.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from test_train_fixtures import alpaca_rows, corpus_lines, make_tiny_llama, make_tokenizer

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
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


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
