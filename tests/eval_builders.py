"""Shared builders for the evaluation tests (no tests here): a BPE tokenizer trained on the spot and a
tiny LLaMA built from a config, saved as a local Hugging Face checkpoint, plus small classification tasks."""

from __future__ import annotations

from pathlib import Path

import torch
from tiny_models import sharpen, tiny_gpt2, tiny_llama

from emotune.atomic import write_jsonl  # noqa: F401  (the tests import it from here)

WORDS = ("the movie was great fun and the acting superb . a dull boring film with no plot at all . "
         "it is about world sports business science and technology human being location numeric value "
         "abbreviation entity description abstract concept . what is the capital of france ? who wrote "
         "hamlet ? review : it is positive negative objective subjective anger joy optimism sadness . "
         "stocks fell sharply as markets opened ; the team won the final match in extra time . "
         "scientists found a new planet orbiting a distant star . how many people live in tokyo ?").split()

CORPUS = [" ".join(WORDS[i:i + 12]) for i in range(0, len(WORDS), 3)] * 4 + [
    'Review: "great" It is positive.', "The following are multiple choice questions (with answers) about",
    "A. B. C. D. Answer:", '"What" It is about location.',
]


def build_tokenizer(path: Path, vocab_size: int = 300):
    """A LLaMA-style (Metaspace) BPE tokenizer that adds BOS and no EOS, saved to `path`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                                        "0123456789.,:;?!\"'()-_\n "))
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(str(path))
    return fast


def build_llama(path: Path | None, vocab_size: int, seed: int = 0, hidden: int = 32, layers: int = 2,
                dtype=torch.float32):
    """The evaluation tests' LLaMA: weights x 8, so that scores differ clearly between labels."""
    return tiny_llama(vocab_size, path=path, seed=seed, hidden=hidden, layers=layers, scale=8.0, dtype=dtype)


TRAIN_TEXTS = [
    "the movie was great fun", "a dull boring film", "what is the capital of france ?", "who wrote hamlet ?",
    "stocks fell sharply as markets opened", "the team won the final match", "scientists found a new planet",
    "how many people live in tokyo ?", "the acting superb and great", "no plot at all , boring",
    "markets opened and stocks fell", "a new star orbiting a planet", "the final match in extra time",
    "what is the location of tokyo ?", "great fun with superb acting", "it is a dull film with no plot",
]
TEST_TEXTS = ["great movie and superb fun", "boring film , no plot", "who is the capital of hamlet ?",
              "stocks and markets fell", "the team won in extra time", "scientists found a planet"]


def rows(texts: list[str], n_labels: int, key: str = "label") -> list[dict]:
    return [{"text": t, key: i % n_labels} for i, t in enumerate(texts)]


# templates with labels of unequal token length that share leading tokens ("It is about ...")
TEMPLATES = {
    2: {0: "Review: <X> It is positive.", 1: "Review: <X> It is negative."},
    4: {0: '"<X>" It is about world.', 1: '"<X>" It is about sports.', 2: '"<X>" It is about business.',
        3: '"<X>" It is about science and technology.'},
    6: {0: '"<X>" It is about abbreviation.', 1: '"<X>" It is about entity.',
        2: '"<X>" It is about description and abstract concept.', 3: '"<X>" It is about human being.',
        4: '"<X>" It is about location.', 5: '"<X>" It is about numeric value.'},
}


# ---------------------------------------------------------------- three tokenizer families (the OpenICL cross-check)

def build_sentencepiece_tokenizer(path: Path, vocab_size: int = 400):
    """LLaMA-style: a sentencepiece BPE model (byte fallback) loaded as LlamaTokenizer; BOS <s> != EOS </s>."""
    from emotune.synthetic.language import train_sentencepiece_tokenizer

    return train_sentencepiece_tokenizer(CORPUS, path, vocab_size=vocab_size)


def _byte_level_bpe(special_tokens: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def build_gpt2_tokenizer(path: Path, vocab_size: int = 400):
    """GPT-2-style byte-level BPE: nothing prepended, BOS == EOS == <|endoftext|>, and decoding cleans up
    spaces before punctuation (what GPT-2's tokenizer did under transformers 4.x, OpenICL's era)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = _byte_level_bpe(["<|endoftext|>"], vocab_size)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", clean_up_tokenization_spaces=True)
    fast.save_pretrained(str(path))
    return fast


def build_opt_tokenizer(path: Path, vocab_size: int = 400):
    """OPT-style byte-level BPE: `</s>` prepended to every text and BOS == EOS == `</s>` (ids as in OPT:
    <s> 0, <pad> 1, </s> 2, <unk> 3)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = _byte_level_bpe(["<s>", "<pad>", "</s>", "<unk>"], vocab_size)
    tok.post_processor = processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="</s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    fast.save_pretrained(str(path))
    return fast


def build_gpt2(path: Path | None, tokenizer, seed: int = 0, hidden: int = 32, layers: int = 2):
    """The evaluation tests' GPT-2 (untied, weights x 8) for `tokenizer`."""
    return tiny_gpt2(len(tokenizer), path=path, seed=seed, hidden=hidden, layers=layers, tie=False, scale=8.0,
                     bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id)


def build_opt(path: Path | None, tokenizer, seed: int = 0, hidden: int = 32, layers: int = 2):
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(seed)
    cfg = OPTConfig(vocab_size=len(tokenizer), hidden_size=hidden, ffn_dim=2 * hidden, num_hidden_layers=layers,
                    num_attention_heads=4, word_embed_proj_dim=hidden, max_position_embeddings=1024,
                    pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    model = sharpen(OPTForCausalLM(cfg).eval(), 8.0)
    if path is not None:
        model.save_pretrained(str(path))
    return model


def build_family(path: Path, family: str, seed: int = 3):
    """A tokenizer + tiny causal LM of one family saved to `path`: llama | gpt2 | opt."""
    if family == "llama":
        tok = build_sentencepiece_tokenizer(path)
        build_llama(path, len(tok), seed=seed)
    elif family == "gpt2":
        tok = build_gpt2_tokenizer(path)
        build_gpt2(path, tok, seed=seed)
    elif family == "opt":
        tok = build_opt_tokenizer(path)
        build_opt(path, tok, seed=seed)
    else:
        raise ValueError(family)
    return tok


def demo_language_world(root: Path, n_valid: int, n_test: int, tie_word_embeddings: bool = True):
    """The demo's synthetic language at a small size under `root/data` and a 1-layer LLaMA config for its
    tokenizer (torch seeded 0): (data dir, tokenizer, config) for the oracle-task and calibration tests."""
    from transformers import AutoTokenizer, LlamaConfig

    from emotune.synthetic.language import write_demo_data

    data = root / "data"
    write_demo_data(data, n_pretrain=600, n_finetune=300, n_valid=n_valid, n_test=n_test, n_icl_index=4, n_icl_test=4)
    tok = AutoTokenizer.from_pretrained(str(data / "tokenizer"))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      tie_word_embeddings=tie_word_embeddings)
    return data, tok, cfg
