"""PandaLM's verdicts are decoded as PandaLM's own inference script decodes them: Hugging Face beam search with
its GenerationConfig (WeOpenML/PandaLM, pandalm/utils/pandalm_inference.py: temperature=0, top_p=1, top_k=1,
num_beams=4, early_stopping=True, repetition_penalty=1.2), one prompt at a time, here on a tiny random LLaMA;
batched with left padding the answers are the same."""

from __future__ import annotations

import pytest
import torch
from instruct_builders import _llama, rule_pairs
from train_builders import make_tokenizer

from emotune.eval.instruct.formats import FORMATS
from emotune.eval.instruct.judge import verdicts_by_generation

NEW = 12


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tok = make_tokenizer(tmp_path_factory.mktemp("beam") / "tok")
    model = _llama(tok, 32, 2, seed=3)
    fmt = FORMATS["pandalm"]
    a, b = rule_pairs(3)
    prompts = [fmt.prompt(x["instruction"], x["output"], y["output"]) for x, y in zip(a, b)]
    prompts += [fmt.prompt(x["instruction"], y["output"], x["output"]) for x, y in zip(a, b)]
    return model, tok, fmt, prompts


def pandalm_reference(model, tok, prompt: str) -> str:
    """PandaLM's inference() call, one prompt, its GenerationConfig as written there."""
    from transformers import GenerationConfig

    ids = tok(prompt, return_tensors="pt")["input_ids"]
    config = GenerationConfig(temperature=0, top_p=1, top_k=1, num_beams=4, early_stopping=True,
                              repetition_penalty=1.2, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        out = model.generate(input_ids=ids, generation_config=config, max_new_tokens=NEW)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_pandalm_decodes_with_its_own_beam_search(world):
    model, tok, fmt, prompts = world
    want = [pandalm_reference(model, tok, p) for p in prompts]
    _, one = verdicts_by_generation(model, tok, prompts, fmt, NEW, batch_size=1)
    assert one == want
    _, batched = verdicts_by_generation(model, tok, prompts, fmt, NEW, batch_size=4)
    assert batched == want
    _, greedy = verdicts_by_generation(model, tok, prompts, fmt, NEW, batch_size=4, num_beams=1,
                                       repetition_penalty=1.0)
    assert greedy != want  # the decoding matters on this model: greedy answers differ
