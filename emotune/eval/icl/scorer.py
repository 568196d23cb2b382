"""Perplexity scoring of candidate prompts (OpenICL `PPLInferencer`, docs/evaluation.md, *Scoring*).

Every test input has L candidate prompts (one per label), each tokenised on its own (BOS, no EOS).
Two rules turn the per-token NLLs into one score per candidate; the prediction is the argmin, ties
going to the first label in template order:

    full          OpenICL's rule: sum of NLL of tokens 1..T-1 of the whole prompt / T (T counts BOS,
                  tokens equal to EOS are left out of both: see rule_scores)
    continuation  lm-eval style: sum of NLL of the tokens after the candidates' common token prefix

Two ways compute the same per-token NLLs:

    naive_token_nlls   every candidate prompt runs through the model in full (what OpenICL does)
    shared_token_nlls  the candidates' longest common *token* prefix runs once per test input with a
                       KV cache; only the label suffixes run per candidate, attending to that cache.
                       Tokenising each full prompt first and comparing tokens means BPE merges at the
                       boundary cannot change the result. Test inputs are batched (right padding, the
                       prefix padding masked out and explicit position ids for the suffixes).

A suffix token at position t is predicted by the logits of position t-1, so the first suffix token is
scored from the prefix run's last logits; a one-token suffix needs no model call at all. The longer
suffixes of a group ride side by side in one row that attends to the group's own cache (a block-diagonal
4D mask, each suffix at its own prompt's positions): the cache is neither copied per candidate nor
attended to once per candidate. Families whose attention cannot take such a mask keep one row per candidate. NLLs are
computed by log-softmax in float32 whatever the model dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Container, Iterable, Sequence

import numpy as np
import torch

from emotune.errors import EmotuneError
from emotune.eval.lm import cache_kwarg, model_device, output_cache, pad_right, row_nlls, token_nlls

RULES = ("full", "continuation")


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of token sequences."""
    first, n = seqs[0], min(len(s) for s in seqs)
    for i in range(n):
        t = first[i]
        if any(s[i] != t for s in seqs[1:]):
            return i
    return n


@torch.no_grad()
def naive_token_nlls(model, seqs: list[list[int]], batch_size: int = 8, progress: bool = False,
                     select: Container[int] | None = None) -> list[np.ndarray]:
    """NLL of tokens 1..T-1 of each sequence, running every sequence in full (right-padded batches);
    `select`: only the batches holding those sequences (see token_nlls)."""
    return token_nlls(model, seqs, batch_size, progress=progress, desc="scoring (full prompts)", select=select)


def _cache_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(cache, "layers"):  # transformers >= 4.56
        return [(layer.keys, layer.values) for layer in cache.layers]
    if hasattr(cache, "key_cache"):
        return list(zip(cache.key_cache, cache.value_cache))
    return [(k, v) for k, v in cache]  # legacy tuple of tuples


def _gather_cache(layers, rows: torch.Tensor | int | None):
    """A fresh cache of `layers`' key/value tensors: the rows `rows` (a tensor of indices), row 0 repeated `rows`
    times (an int: an expanded view, copied once by the cache itself), or the tensors as they are (None)."""
    from transformers import DynamicCache

    if rows is None:
        data = list(layers)
    elif isinstance(rows, int):
        data = [(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in layers]
    else:
        data = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in layers]
    try:
        return DynamicCache(data)
    except TypeError:  # transformers < 4.52
        return DynamicCache.from_legacy_cache(tuple(data))


def _forward(model, ids, mask, positions=None, layers=None, rows=None):
    """One model call; `layers` (a cache's key/value tensors) are gathered by `rows` into a fresh cache
    (see _gather_cache)."""
    kwargs = {}
    if layers is not None:
        kwargs[cache_kwarg(model)] = _gather_cache(layers, rows)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs)
    return out.logits, _cache_layers(output_cache(out))


@torch.no_grad()
def shared_token_nlls(model, groups: list[list[list[int]]], batch_size: int = 8,
                      progress: bool = False, select: Container[int] | None = None) -> list[list[np.ndarray]]:
    """Per test input (a group of candidate token sequences), the NLL of tokens 1..T-1 of each candidate.
    Equal to `naive_token_nlls` up to float rounding, computing each shared token prefix only once:

      level 0  the prefix common to every candidate of every group (BOS; for MMLU the subject's hint and
               demos): one call for the whole set of groups, batch 1
      level 1  the rest of each group's common prefix (demos and test input): one call per batch of groups
      level 2  the label suffixes, minus their first token (scored from level 1's last logits): one row per
               group where the model takes the packed mask (_packable), else one row per candidate

    `select` (group indices; a shard of the task, emotune.tasks.shards): every group is still given, so that the
    plan — the level-0 prefix, the batches — is the whole run's, but only the model calls that involve a
    selected group run; their NLLs are thus bit for bit the whole run's. Other groups' entries stay None.
    """
    dev = model_device(model)
    results: list[list[np.ndarray] | None] = [None] * len(groups)
    # a group whose candidates share no token (no BOS, different first tokens) has nothing to share
    plain = [g for g, cands in enumerate(groups) if common_prefix_len(cands) == 0]
    if plain:
        flat = [s for g in plain for s in groups[g]]
        owner = [g for g in plain for _ in groups[g]]  # the group of each flat candidate
        wanted = None if select is None else {k for k, g in enumerate(owner) if g in select}
        nlls = naive_token_nlls(model, flat, batch_size, select=wanted)
        for g in plain:
            results[g], nlls = nlls[: len(groups[g])], nlls[len(groups[g]) :]
    todo = [g for g in range(len(groups)) if results[g] is None]
    if not todo or (select is not None and not any(g in select for g in todo)):
        return results  # type: ignore[return-value]

    # level 0
    c = common_prefix_len([s for g in todo for s in groups[g]])
    common_layers, common_nll, common_last = None, torch.zeros(0, dtype=torch.float64), None
    if c > 0:
        ids0 = torch.tensor([groups[todo[0]][0][:c]], device=dev)
        logits0, common_layers = _forward(model, ids0, torch.ones_like(ids0))
        common_nll = row_nlls(logits0[0, : c - 1], ids0[0, 1:c]).double().cpu()
        common_last = logits0[0, c - 1].float().log_softmax(-1)
        del logits0

    for start in _progress(range(0, len(todo), batch_size), progress, "scoring (shared prefix)"):
        chunk = todo[start : start + batch_size]
        if select is not None and not any(g in select for g in chunk):
            continue  # another shard's batch
        cands = [groups[g] for g in chunk]
        plen = [common_prefix_len(cs) for cs in cands]
        layers, mask1, prefix_nll, last = _level1(model, cands, plen, c, common_layers, common_nll, common_last)
        first, rest = _level2(model, cands, plen, last, layers, mask1)
        for i, (g, cs) in enumerate(zip(chunk, cands)):
            per_cand = []
            for j in range(len(cs)):
                parts = [prefix_nll[i]] + [d[i, j] for d in (first, rest) if (i, j) in d]
                per_cand.append(torch.cat(parts).numpy())
            results[g] = per_cand
    return results  # type: ignore[return-value]


def _level1(model, cands, plen, c, common_layers, common_nll, common_last):
    """Level 1 of shared_token_nlls: tokens c..p-1 of each group, attending to level 0. Returns the
    groups' cache, attention mask, prefix NLLs and the log-probs that predict the first suffix token."""
    dev = model_device(model)
    B = len(cands)
    prefix_nll, last = [], []
    if not any(p > c for p in plen):  # every group's prefix is the level-0 prefix
        layers = [(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)) for k, v in common_layers]
        return layers, torch.ones(B, c, dtype=torch.long, device=dev), [common_nll] * B, [common_last] * B
    ids1, mask1 = pad_right([cs[0][c:p] if p > c else [0] for cs, p in zip(cands, plen)])
    for i, p in enumerate(plen):
        if p == c:
            mask1[i] = 0
    ids1, mask1 = ids1.to(dev), mask1.to(dev)
    pos1 = c + torch.arange(ids1.shape[1], device=dev)[None, :].expand(B, -1)
    if c > 0:
        mask1 = torch.cat([torch.ones(B, c, dtype=torch.long, device=dev), mask1], dim=1)
    logits1, layers = _forward(model, ids1, mask1, pos1, common_layers, B)  # level 0's one row, B times
    for i, p in enumerate(plen):
        n = p - c
        parts = [common_nll]
        if n > 0 and c > 0:  # token c is predicted by level 0's last logits
            parts.append(-common_last[ids1[i, 0]].double().cpu().reshape(1))
        if n > 1:
            parts.append(row_nlls(logits1[i, : n - 1], ids1[i, 1:n]).double().cpu())
        prefix_nll.append(torch.cat(parts))
        last.append(logits1[i, n - 1].float().log_softmax(-1) if n > 0 else common_last)
    return layers, mask1, prefix_nll, last


def _level2(model, cands, plen, last, layers, mask1):
    """Level 2 of shared_token_nlls: the first suffix token from the prefix's last log-probs, the rest with
    one model call attending to the groups' cache. Returns NLLs keyed by (group in chunk, candidate)."""
    first: dict[tuple[int, int], torch.Tensor] = {}
    rows = []  # (group in chunk, candidate, inputs, targets) of every suffix longer than one token
    for i, (cs, p) in enumerate(zip(cands, plen)):
        for j, s in enumerate(cs):
            if len(s) > p:
                first[i, j] = -last[i][s[p]].double().cpu().reshape(1)
            if len(s) > p + 1:
                rows.append((i, j, s[p:-1], s[p + 1 :]))
    if not rows:
        return first, {}
    if _packable(model):
        return first, _suffixes_packed(model, rows, len(cands), plen, layers, mask1)
    return first, _suffixes_per_candidate(model, rows, plen, layers, mask1)


# Model families whose attention takes a custom 4D mask as given (transformers' masking_utils) and whose
# positions come from `position_ids`: tests/eval/icl/test_eval_scorer.py checks each against the per-candidate
# path and a float64 reference. Others (ALiBi, sliding windows, older transformers) keep one row per candidate.
PACKED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gpt2", "opt")


def _packable(model) -> bool:
    """Whether every label suffix of a group can ride in one row of its group (a block-diagonal 4D mask)."""
    import importlib.util

    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in PACKED_MODEL_TYPES:
        return False
    if getattr(cfg, "_attn_implementation", None) not in ("sdpa", "eager"):
        return False  # flash attention takes no custom mask
    if getattr(cfg, "sliding_window", None) is not None and any(
            t != "full_attention" for t in (getattr(cfg, "layer_types", None) or ["sliding_attention"])):
        return False  # a custom mask would replace the window
    return importlib.util.find_spec("transformers.masking_utils") is not None  # transformers >= 4.53


def _suffixes_packed(model, rows, n_groups, plen, layers, mask1):
    """The label suffixes of each group side by side in one row of that group's cache (no copy of the cache per
    candidate): a suffix token sees its group's prefix and the earlier tokens of its own suffix only, at the
    positions it has in its own prompt. Padded slots see the prefix and themselves (their output is unused)."""
    dev = model_device(model)
    dtype = next((t.dtype for t in model.parameters() if t.is_floating_point()), torch.float32)
    per_group: list[list] = [[] for _ in range(n_groups)]
    for row in rows:
        per_group[row[0]].append(row)
    width = max(max(sum(len(r[2]) for r in g) for g in per_group), 1)
    kv = mask1.shape[1]
    ids = torch.zeros(n_groups, width, dtype=torch.long)
    pos = torch.tensor(plen, dtype=torch.long)[:, None].repeat(1, width)
    see = torch.zeros(n_groups, width, kv + width, dtype=torch.bool)
    see[:, :, :kv] = mask1.bool().cpu()[:, None, :]
    see[:, :, kv:] = torch.eye(width, dtype=torch.bool)  # padded slots: themselves
    spans = {}
    for i, group in enumerate(per_group):
        o = 0
        for _, j, inp, _ in group:
            n = len(inp)
            ids[i, o : o + n] = torch.tensor(inp)
            pos[i, o : o + n] += torch.arange(n)
            see[i, o : o + n, kv + o : kv + o + n] = torch.ones(n, n, dtype=torch.bool).tril()
            spans[i, j] = o
            o += n
    mask = torch.zeros(see.shape, dtype=dtype).masked_fill_(~see, torch.finfo(dtype).min)[:, None]
    logits, _ = _forward(model, ids.to(dev), mask.to(dev), pos.to(dev), layers, None)
    rest = {}
    for i, j, _, tgt in rows:
        o = spans[i, j]
        rest[i, j] = row_nlls(logits[i, o : o + len(tgt)], torch.tensor(tgt, device=dev)).double().cpu()
    return rest


def _suffixes_per_candidate(model, rows, plen, layers, mask1):
    """One row per candidate, attending to a copy of its group's cache (models that cannot take _packable's mask)."""
    dev = model_device(model)
    row_src = [r[0] for r in rows]
    row_in = [r[2] for r in rows]
    src = torch.tensor(row_src, device=dev)
    ids2, mask2 = pad_right(row_in)
    ids2, mask2 = ids2.to(dev), mask2.to(dev)
    offsets = torch.tensor([plen[i] for i in row_src], device=dev)
    # a padded slot repeats its row's last position: the row's offset plus the batch's longest suffix
    # could pass the model's positions (GPT-2: no embedding there) though every real token is within
    ends = torch.tensor([len(x) - 1 for x in row_in], device=dev)
    steps = torch.minimum(torch.arange(ids2.shape[1], device=dev)[None, :], ends[:, None])
    pos2 = offsets[:, None] + steps
    mask2 = torch.cat([mask1.index_select(0, src), mask2], dim=1)
    logits2, _ = _forward(model, ids2, mask2, pos2, layers, src)
    rest = {}
    for r, (i, j, _, tgt) in enumerate(rows):
        rest[i, j] = row_nlls(logits2[r, : len(tgt)], torch.tensor(tgt, device=dev)).double().cpu()
    return rest


def rule_scores(cands: list[list[int]], nlls: list[np.ndarray], rule: str = "full",
                ignore_id: int | None = None) -> list[float]:
    """One score per candidate (lower is better) from its per-token NLLs (tokens 1..T-1).

    `ignore_id` reproduces OpenICL's padding rule: it pads with EOS and ignores every token equal to
    it, both in the NLL sum and in the count T. That matters when a prompt holds the EOS token, and for
    every prompt of a tokenizer whose BOS is EOS (OPT): T then does not count the BOS.
    """
    if rule not in RULES:
        raise EmotuneError(f"key 'scoring' must be one of {', '.join(RULES)} (got {rule!r})")
    p = common_prefix_len(cands)
    scores = []
    for s, nll in zip(cands, nlls):
        ids = np.asarray(s)
        keep = np.ones(len(s) - 1, dtype=bool) if ignore_id is None else ids[1:] != ignore_id
        if rule == "full":
            count = len(s) if ignore_id is None else int((ids != ignore_id).sum())
            scores.append(float(nll[keep].sum() / max(count, 1)))
        else:  # tokens p..T-1 are the continuation; NLL index t-1 predicts token t
            scores.append(float(nll[max(p - 1, 0):][keep[max(p - 1, 0):]].sum()))
    return scores


def argmin_first(scores: Sequence[float]) -> int:
    """Index of the lowest score; ties go to the first (Python's list.index(min(...)), as OpenICL)."""
    return list(scores).index(min(scores))


@dataclass
class Scored:
    scores: list[list[float]]  # per test input, per candidate
    predictions: list[int]  # index of the chosen candidate


def score_groups(model, groups: list[list[list[int]]], rule: str = "full", shared_prefix: bool = True,
                 batch_size: int = 8, ignore_id: int | None = None, progress: bool = False,
                 select: Container[int] | None = None) -> Scored:
    """Score every candidate of every test input and pick the lowest. `select` (indices into `groups`):
    score only those, with exactly the model calls the whole run makes for them (a shard of the task);
    the others' scores and predictions are None."""
    if rule not in RULES:
        raise EmotuneError(f"key 'scoring' must be one of {', '.join(RULES)} (got {rule!r})")
    if shared_prefix:
        nlls = shared_token_nlls(model, groups, batch_size, progress, select=select)
    else:
        starts, k = [], 0
        for g in groups:
            starts.append(k)
            k += len(g)
        wanted = None if select is None else {starts[g] + j for g in select for j in range(len(groups[g]))}
        flat = naive_token_nlls(model, [s for g in groups for s in g], batch_size, progress, select=wanted)
        nlls = [flat[starts[i] : starts[i] + len(g)] for i, g in enumerate(groups)]
    keep = range(len(groups)) if select is None else select
    scores = [rule_scores(g, n, rule, ignore_id) if i in keep else None for i, (g, n) in enumerate(zip(groups, nlls))]
    return Scored(scores, [argmin_first(s) if s is not None else None for s in scores])


def _progress(it: Iterable, enabled: bool, desc: str):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, leave=False)
