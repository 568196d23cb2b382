"""The one builder of tiny LLaMA models and the one of tiny GPT-2 models every test uses (the per-area presets in
*_builders.py and the session cache in conftest.py call these). Seeded, so a (size, seed) always gives the same weights."""

from __future__ import annotations

from pathlib import Path

import torch


def sharpen(model, scale: float):
    """Weight matrices times `scale`: peakier next-token distributions than the init, so that models, seeds and
    labels differ clearly in the tests' scores."""
    if scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.mul_(scale)
    return model


def tiny_llama(vocab_size: int, *, path: Path | str | None = None, seed: int = 0, hidden: int = 32, layers: int = 2,
               heads: int = 4, kv_heads: int = 2, intermediate: int | None = None, max_positions: int = 2048,
               tie: bool = False, bos: int | None = 1, eos: int | None = 2, pad: int | None = None, scale: float = 1.0,
               dtype=torch.float32, eval_mode: bool = True):
    """A LLaMA of `layers` x `hidden` (MLP 2 x hidden unless given), saved as safetensors to `path` if given."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=max_positions, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad,
                      tie_word_embeddings=tie)
    model = LlamaForCausalLM(cfg).to(dtype)
    if eval_mode:
        model.eval()
    sharpen(model, scale)
    if path is not None:
        model.save_pretrained(str(path), safe_serialization=True)
    return model


def tiny_gpt2(vocab_size: int, *, path: Path | str | None = None, seed: int = 0, hidden: int = 32, layers: int = 2,
              heads: int = 4, max_positions: int = 1024, tie: bool = True, bos: int = 1, eos: int = 2,
              scale: float = 1.0):
    """A GPT-2 of `layers` x `hidden` in eval mode (no dropout), saved as safetensors to `path` if given."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab_size, n_positions=max_positions, n_embd=hidden, n_layer=layers, n_head=heads,
                     bos_token_id=bos, eos_token_id=eos, tie_word_embeddings=tie)
    model = sharpen(GPT2LMHeadModel(cfg).eval(), scale)
    if path is not None:
        model.save_pretrained(str(path), safe_serialization=True)
    return model
