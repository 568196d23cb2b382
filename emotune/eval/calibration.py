"""Calibration at the synthetic language's branch points: the model's next-token mass per branch against the
oracle's, and EMO's population optimum there (emotune.synthetic.population), for the demo's report.

A branch point is a word class after which the grammar chooses among several classes: after a sentence end
(".") the text continues with a determiner, says `it is about <topic>`, or ends (END = EOS); after a noun comes
a verb, a preposition or ".". At every such position of the validation texts the model's probability mass on
each branch's tokens is summed (the words of that class; EOS for END), and so is the oracle's (exact) and the
population optimum's of EMO-1 and EMO-2 (computed from the oracle's distribution and the cost embedding alone,
no model). Each is averaged over the same positions (at most MAX_CONTEXTS per point, evenly spaced).
Metrics, flat floats the result store keeps:

    calib/<point>/<branch>                 the model's mean mass (point: dot | noun)
    calib/<point>/<branch>/oracle          the language's
    calib/<point>/<branch>/emo1_optimum    EMO-1's population optimum (EMO-2: emo2_optimum)
    calib/<point>/contexts                 positions averaged

The cost embedding is the one EMO trains with by default (`frozen`): the LM head of the checkpoint the run
was fine-tuned from, which the checkpoint's manifest.json names (`model`); without one, the evaluated
model's own head. The optima depend only on that and the oracle, so they are cached in the data folder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from emotune.atomic import read_json, write_json
from emotune.errors import EmotuneError, one_line
from emotune.synthetic.language import GRAMMAR
from emotune.synthetic.oracle import TokenOracle
from emotune.synthetic.population import cost_matrix, population_optimum

# report name -> word class whose next word branches
POINTS = {"dot": "DOT", "noun": "NOUN"}
MAX_CONTEXTS = 96  # positions per branch point, evenly spaced over the texts' (the optimum is ~20 ms each)
OPTIMA = ("emo1", "emo2")
HEAD_KEYS = ("lm_head.weight", "model.embed_tokens.weight")


def branch_tokens(oracle: TokenOracle) -> dict[str, dict[str, np.ndarray]]:
    """point -> branch name (the next class, lower case) -> token ids of that branch."""
    lang = oracle.lang
    word_class = [lang.concept_class[c] for c in lang.emission.argmax(0)]
    out = {}
    for point, cls in POINTS.items():
        out[point] = {}
        for nxt in GRAMMAR[cls]:
            ids = [oracle.eos] if nxt == "END" else [int(oracle.word_token[w]) for w in range(lang.n_words)
                                                      if word_class[w] == nxt]
            out[point][nxt.lower()] = np.array(ids)
    return out


def branch_contexts(oracle: TokenOracle, texts: list[str], limit: int = MAX_CONTEXTS) -> dict[str, list[tuple[int, int]]]:
    """point -> (text index, position t) where position t's prediction follows a word of that class
    (t counts predictions: 0 = after BOS, t = after the t-th word); at most `limit`, evenly spaced."""
    lang = oracle.lang
    word_class = [lang.concept_class[c] for c in lang.emission.argmax(0)]
    out: dict[str, list[tuple[int, int]]] = {p: [] for p in POINTS}
    for i, text in enumerate(texts):
        for t, w in enumerate(lang.word_ids(text), start=1):
            for point, cls in POINTS.items():
                if word_class[w] == cls:
                    out[point].append((i, t))
    for point, ctx in out.items():
        if len(ctx) > limit:
            out[point] = [ctx[int(j)] for j in np.linspace(0, len(ctx) - 1, limit).round()]
    return out


def model_branch_mass(logq_per_text: list[np.ndarray], contexts, tokens) -> dict[str, float]:
    """The model's mean mass per branch: `logq_per_text[i][t]` is log q at prediction t of text i."""
    out = {}
    for point, ctx in contexts.items():
        if not ctx:
            continue
        for branch, ids in tokens[point].items():
            out[f"calib/{point}/{branch}"] = float(np.mean([np.exp(logq_per_text[i][t][ids]).sum() for i, t in ctx]))
        out[f"calib/{point}/contexts"] = float(len(ctx))
    return out


def reference_branch_mass(oracle: TokenOracle, texts: list[str], contexts, tokens, cost: np.ndarray | None,
                          cache: Path | None = None) -> dict[str, float]:
    """The oracle's mean mass per branch and, with a cost matrix, EMO-1's / EMO-2's population optimum's.
    Cached in `cache` (a JSON file keyed by the texts and the cost) when given."""
    key = hashlib.sha256(json.dumps(texts).encode())
    if cost is not None:
        key.update(np.ascontiguousarray(cost, dtype=np.float64).tobytes())
    digest = key.hexdigest()[:16]
    if cache is not None and cache.is_file():
        try:
            stored = read_json(cache, "calibration cache")
            if stored.get("key") == digest:
                return dict(stored["metrics"])
        except (EmotuneError, AttributeError, KeyError, TypeError):
            pass  # a stale or foreign cache is recomputed and overwritten
    sums: dict[str, list[float]] = {}
    words = [oracle.lang.word_ids(t) for t in texts]
    for point, ctx in contexts.items():
        for i, t in ctx:
            p = oracle.next_token_probs(words[i][:t])
            dists = {"oracle": p}
            if cost is not None:
                dists.update({f"{o}_optimum": population_optimum(p, cost, o) for o in OPTIMA})
            for source, q in dists.items():
                for branch, ids in tokens[point].items():
                    sums.setdefault(f"calib/{point}/{branch}/{source}", []).append(float(q[ids].sum()))
    metrics = {k: float(np.mean(v)) for k, v in sums.items()}
    if cache is not None:
        write_json(cache, {"key": digest, "metrics": metrics})
    return metrics


def base_checkpoint(model_path: str | None) -> Path | None:
    """The checkpoint a fine-tuned checkpoint started from (its manifest's `model`), resolved against the
    working directory, then against the checkpoint's parent folders (a relative path from the pipeline's)."""
    if not model_path:
        return None
    manifest = Path(model_path) / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        base = read_json(manifest, "checkpoint manifest").get("model")
    except (EmotuneError, AttributeError):
        return None
    if not isinstance(base, str) or not base:
        return None
    for root in (Path.cwd(), *Path(model_path).resolve().parents):
        if (root / base / "model.safetensors").is_file():
            return root / base
    return None


def read_head(checkpoint: Path) -> np.ndarray:
    """The output embedding `[V, H]` of a local safetensors checkpoint, float64 (only that tensor is read)."""
    from safetensors import safe_open

    from emotune.hub import check_safetensors

    file = checkpoint / "model.safetensors"
    check_safetensors(file)
    try:
        with safe_open(str(file), "np") as f:
            key = next((k for k in HEAD_KEYS if k in f.keys()), None)
            if key is None:
                raise EmotuneError(f"{file}: no LM head ({' or '.join(HEAD_KEYS)})")
            return f.get_tensor(key).astype(np.float64)
    except EmotuneError:
        raise
    except Exception as err:  # noqa: BLE001 - a file cut inside the tensor data
        raise EmotuneError(f"{file}: cannot read the LM head ({one_line(err)})") from None


def cost_for(model) -> tuple[np.ndarray, str]:
    """The cost matrix EMO trained the evaluated model with (frozen: its base checkpoint's head), and where
    it came from."""
    path = getattr(model.config, "_name_or_path", None) or getattr(model, "name_or_path", None)
    base = base_checkpoint(path)
    if base is not None:
        return cost_matrix(read_head(base)), f"LM head of {base}"
    head = model.get_output_embeddings().weight.detach().double().cpu().numpy()
    return cost_matrix(head), "the evaluated model's own LM head"


def calibration_metrics(logq_per_text: list[np.ndarray], oracle: TokenOracle, texts: list[str], model,
                        cache_dir: Path | None = None) -> tuple[dict[str, float], dict]:
    """Every `calib/...` metric for `texts` (the model's log q per prediction given), and its settings."""
    tokens = branch_tokens(oracle)
    contexts = branch_contexts(oracle, texts)
    cost, source = cost_for(model)
    V = oracle.vocab_size
    cost = cost[:V, :V]
    cache = cache_dir / "calibration-reference.json" if cache_dir is not None else None
    metrics = model_branch_mass([lq[:, :V] for lq in logq_per_text], contexts, tokens)
    metrics.update(reference_branch_mass(oracle, texts, contexts, tokens, cost, cache))
    return metrics, {"cost_embedding": source, "branch_points": {p: POINTS[p] for p in POINTS}}
