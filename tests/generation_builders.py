"""Shared builders for the generation / MAUVE / LM-metric tests (no tests here): a BPE tokenizer trained
on the spot, tiny LLaMA and GPT-2 models built from a config, and small corpora in two styles."""

from __future__ import annotations

import random
from pathlib import Path

from tiny_models import tiny_gpt2, tiny_llama

from emotune.atomic import write_jsonl  # noqa: F401  (the tests import it from here)

SPORTS = ("the team won the final match in extra time after a late goal from the striker and the fans "
          "sang in the stadium while the coach praised the defence and the keeper saved a penalty").split()
MARKETS = ("stocks fell sharply as markets opened on monday and investors sold shares of banks while "
           "oil prices rose and the central bank kept interest rates unchanged for another quarter").split()
WORDS = sorted(set(SPORTS + MARKETS)) + [".", ",", "=", "Valkyria", "Chronicles"]


def sentences(words: list[str], n: int, length: int, seed: int) -> list[str]:
    """`n` texts of `length` words drawn from `words` (a fixed style per word list)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(length)) for _ in range(n)]


def build_tokenizer(path: Path, vocab_size: int = 160):
    """A LLaMA-style (Metaspace) BPE tokenizer that adds BOS and no EOS, saved to `path`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=list("abcdefghijklmnopqrstuvwxyzVC.,=- "))
    tok.train_from_iterator(sentences(SPORTS, 40, 20, 1) + sentences(MARKETS, 40, 20, 2) + [" ".join(WORDS)], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(str(path))
    return fast


def build_llama(path: Path | None, vocab_size: int, seed: int = 0, hidden: int = 32, scale: float = 4.0):
    """The generation tests' LLaMA: weights x `scale`, so that models and seeds differ clearly."""
    return tiny_llama(vocab_size, path=path, seed=seed, hidden=hidden, max_positions=512, scale=scale)


def build_gpt2(path: Path, vocab_size: int, seed: int = 0):
    return tiny_gpt2(vocab_size, path=path, seed=seed, max_positions=512)
