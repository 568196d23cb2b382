"""Unbiased, batch-invariant ancestral sampling (temperature 1, full distribution) from a causal LM.

Seeding: every (prefix, run) pair has its own torch.Generator, seeded from (seed, run, prefix index)
through numpy's SeedSequence, which draws the row's uniforms; a token is the inverse CDF of the row's
next-token distribution at its uniform. The draws do not depend on which other prompts share the batch, so a
batched run gives the same tokens as one prompt at a time, up to float rounding: left padding changes
the shapes the model's matmuls see, and a last-bit difference in a probability could in principle move a
draw across a CDF boundary (probability ~1e-7 per token in float32; never seen in the tests). HF
`generate(do_sample=True)` draws one batch-wide multinomial from the global RNG instead, so its samples
change with the batch composition: that is why we run our own loop (also: no generation_config.json of
the checkpoint can slip a repetition penalty or suppressed tokens into an "unbiased" sample).
"""

from __future__ import annotations

import inspect
import time
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from emotune.errors import EmotuneError
from emotune.eval.lm import cache_kwarg, model_device, output_cache, pad_left

if TYPE_CHECKING:
    from emotune.eval.generation.task import Example


def row_seed(seed: int, run: int, index: int) -> int:
    """A well-mixed 63-bit seed per (global seed, run, prefix index)."""
    return int(np.random.SeedSequence([seed, run, index]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def _eos_ids(tokenizer, model) -> list[int]:
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    return sorted(i for i in ids if i is not None)


@torch.no_grad()
def sample_batch(model, prompts: Sequence[Sequence[int]], seeds: Sequence[int], min_new_tokens: int,
                 max_new_tokens: int, eos_ids: Sequence[int] = (), pad_id: int = 0,
                 temperature: float = 1.0) -> list[list[int]]:
    """Ancestral samples (full distribution) for left-padded prompts, one generator per row.

    Returns the new tokens of each row: at least `min_new_tokens` (EOS masked out before that), at most
    `max_new_tokens`, ending at the first EOS if one is drawn. `temperature` divides the logits (in
    float32); 0 is greedy decoding (the argmax, lowest id on a tie), which draws nothing."""
    if min_new_tokens > max_new_tokens:
        raise ValueError(f"min_new_tokens {min_new_tokens} > max_new_tokens {max_new_tokens}")
    if not temperature >= 0:  # also nan
        raise ValueError(f"temperature {temperature} < 0")
    dev = model_device(model)
    b = len(prompts)
    if min(len(p) for p in prompts) == 0:
        raise EmotuneError("sampling: an empty prompt (the tokenizer produced no tokens for a prefix)")
    ids, mask = pad_left(prompts, pad_id)
    ids, mask = ids.to(dev), mask.to(dev)
    gens = [torch.Generator(device=dev).manual_seed(int(s)) for s in seeds]
    # each row's uniforms for every step, drawn up front from its own generator: a draw is then the
    # inverse CDF (float64) of the row's distribution at its uniform, one vectorised op per step
    uniforms = torch.stack([torch.rand(max_new_tokens, generator=g, device=dev, dtype=torch.float64) for g in gens])
    params = inspect.signature(model.forward).parameters
    cache_kw = cache_kwarg(model)
    use_pos = "position_ids" in params
    pos = (mask.cumsum(1) - 1).clamp(min=0)

    kwargs: dict[str, Any] = {"attention_mask": mask, "use_cache": True}
    if use_pos:
        kwargs["position_ids"] = pos
    if "logits_to_keep" in params:  # the prompt's other positions' logits are never used
        kwargs["logits_to_keep"] = 1
    out = model(input_ids=ids, **kwargs)
    new = torch.zeros((b, 0), dtype=torch.long, device=dev)
    done = torch.zeros(b, dtype=torch.bool, device=dev)
    eos = torch.tensor(list(eos_ids), dtype=torch.long, device=dev)
    for step in range(max_new_tokens):
        logits = out.logits[:, -1, :].float()
        if step < min_new_tokens and len(eos):
            logits[:, eos] = float("-inf")
        tok = _draw(logits, uniforms[:, step : step + 1], temperature)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        new = torch.cat([new, tok[:, None]], dim=1)
        if len(eos):
            done = done | torch.isin(tok, eos)
        if step + 1 == max_new_tokens or bool(done.all()):
            break
        cache = output_cache(out)
        if cache is None:
            raise EmotuneError(f"sampling: {type(model).__name__} returned no KV cache (use_cache=True)")
        mask = torch.cat([mask, torch.ones((b, 1), dtype=mask.dtype, device=dev)], dim=1)
        pos = pos[:, -1:] + 1
        kwargs = {"attention_mask": mask, "use_cache": True, cache_kw: cache}
        if use_pos:
            kwargs["position_ids"] = pos
        out = model(input_ids=tok[:, None], **kwargs)
    return _cut_after_eos(new.tolist(), eos_ids)


def _draw(logits: torch.Tensor, uniform: torch.Tensor, temperature: float) -> torch.Tensor:
    """One token per row: the argmax at temperature 0, else the inverse CDF (float64) at the row's uniform."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    cdf = torch.softmax(logits / temperature, dim=-1).double().cumsum(-1)
    x = uniform * cdf[:, -1:]
    return torch.searchsorted(cdf, x, right=True).clamp(max=cdf.shape[1] - 1).view(len(logits))


def _cut_after_eos(rows: list[list[int]], eos_ids: Sequence[int]) -> list[list[int]]:
    """Each row up to and including its first EOS (rows that drew none stay whole)."""
    eos_set = set(int(e) for e in eos_ids)
    out = []
    for row in rows:
        end = next((j + 1 for j, t in enumerate(row) if t in eos_set), len(row))
        out.append(row[:end])
    return out


def _decode_continuation(tokenizer, prompt_ids: list[int], new_ids: list[int], prefix: str) -> str:
    """The sample's text after the prefix: decode prompt + sample and cut the prefix off (so word pieces
    that join the prefix's last word decode as they should); fall back to decoding the sample alone."""
    full = tokenizer.decode(list(prompt_ids) + list(new_ids), skip_special_tokens=True,
                            clean_up_tokenization_spaces=False)
    if full.startswith(prefix):
        return full[len(prefix):].strip()
    return tokenizer.decode(list(new_ids), skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()


EOS_RULES = ("min_new_tokens", "ignore")


def sample_runs(model, prompts: Sequence[Sequence[int]], keys: Sequence[int], runs: int, seed: int, new_tokens: int,
                eos_rule: str, eos_ids: Sequence[int], pad_id: int, batch_size: int = 32,
                progress: bool = False) -> list[list[list[int]]]:
    """`runs` samples of every prompt: `[run][prompt] -> new token ids`. Row (run, i) is seeded by
    (seed, run, keys[i]), so a sample does not depend on the batch it ran in.

    `eos_rule` (docs/generation-eval.md): `min_new_tokens`, the paper's HF generate call
    (`min_new_tokens = new_tokens`, `max_new_tokens = new_tokens + 1`: EOS is masked until `new_tokens`
    tokens exist and ends the sample after that); `ignore`, exactly `new_tokens` tokens, EOS neither masked
    nor stopping (a sample runs on past a document end as the packed text it is compared with does)."""
    if eos_rule not in EOS_RULES:
        raise EmotuneError(f"eos rule {eos_rule!r}: use one of {', '.join(EOS_RULES)}")
    lo, hi, stop = (new_tokens, new_tokens + 1, list(eos_ids)) if eos_rule == "min_new_tokens" else \
        (0, new_tokens, [])
    jobs = [(run, i) for run in range(runs) for i in range(len(prompts))]
    # similar prompt lengths share a batch (less padding); results go back to job order
    order = sorted(range(len(jobs)), key=lambda j: (len(prompts[jobs[j][1]]), j))
    out: list[list[list[int]]] = [[[] for _ in prompts] for _ in range(runs)]
    t0 = time.time()
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        seeds = [row_seed(seed, jobs[j][0], keys[jobs[j][1]]) for j in chunk]
        rows = sample_batch(model, [prompts[jobs[j][1]] for j in chunk], seeds, lo, hi, stop, pad_id)
        for j, row in zip(chunk, rows):
            out[jobs[j][0]][jobs[j][1]] = row
        if progress:
            print(f"[generation] {min(start + batch_size, len(order))}/{len(order)} samples "
                  f"({time.time() - t0:.0f}s)", flush=True)
    return out


def pad_id_of(tokenizer, eos: Sequence[int]) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)


def generate_samples(model, tokenizer, examples: Sequence[Example], runs: int, seed: int, new_tokens: int,
                     batch_size: int = 32, progress: bool = False,
                     eos_rule: str = "min_new_tokens") -> list[dict[str, Any]]:
    """`runs` samples per prefix; one record per (run, prefix), runs in order."""
    eos = _eos_ids(tokenizer, model)
    prompts = [list(tokenizer(ex.prefix)["input_ids"]) for ex in examples]
    samples = sample_runs(model, prompts, [ex.index for ex in examples], runs, seed, new_tokens, eos_rule, eos,
                          pad_id_of(tokenizer, eos), batch_size, progress)
    records = []
    for run in range(runs):
        for i, ex in enumerate(examples):
            toks = samples[run][i]
            cont = _decode_continuation(tokenizer, prompts[i], toks, ex.prefix)
            records.append({"run": run, "row": ex.index, "seed": row_seed(seed, run, ex.index), "prefix": ex.prefix,
                            "human_continuation": ex.continuation, "sample": cont, "text": f"{ex.prefix} {cont}",
                            "n_new_tokens": len(toks), "eos": bool(set(toks) & set(eos)),
                            "prompt_tokens": prompts[i], "tokens": toks})
    return records
