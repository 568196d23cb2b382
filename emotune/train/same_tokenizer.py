"""Is another checkpoint's tokenizer the student's? Shared by the teacher (`teacher.model`) and the external cost
embedding (`objective.cost_source`): both are used id by id against the student's vocabulary, so a checkpoint whose
tokenizer maps the same text to other ids — another family with an equal vocabulary size included — is refused."""

from __future__ import annotations

from emotune.errors import EmotuneError, one_line
from emotune.hub import resolve

# Text the two tokenizers must split alike: words, digits, runs of spaces, tabs and newlines, punctuation, accents,
# CJK, emoji (byte fallback). Equal vocabularies with other merges or normalisers give these other ids.
PROBES = ("The quick brown fox jumps over the lazy dog. 0123456789 3.14",
          "  two spaces,\ttab\nnew line;  punctuation!? (x) [y] {z} <w> @#$%^&*_+=|~`'\"",
          "caf\u00e9 na\u00efve Stra\u00dfe \u6771\u4eac \U0001f600 \u2014 \u201cquotes\u201d")
# pad is left out: padded positions are masked and never targets, and a run may set pad = eos on its own copy
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token")


def load_checkpoint_tokenizer(source: str, key: str, why: str, revision: str | None = None,
                              trust_remote_code: bool = False):
    """The tokenizer saved with the checkpoint at `source` (`key` names it in errors; a checkpoint without one
    cannot be checked against the student's: refused, `why` says what needs the check)."""
    from transformers import AutoTokenizer

    try:
        extra = resolve(source, key, revision, need_tokenizer=True, filename="tokenizer_config.json")
    except EmotuneError as err:
        raise EmotuneError(f"{err}; {why}") from None
    try:
        return AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code, **extra)
    except Exception as err:  # transformers raises what the tokenizer's family raises (OSError, ValueError, ...)
        raise EmotuneError(f"{key}: cannot load a tokenizer from {source!r}: {one_line(err)}") from None


def check_same_tokenizer(other_tok, student_tok, key: str, who: str, why: str) -> None:
    """Refuse `other_tok` (the `who`'s, e.g. "teacher") unless it maps the student's text to the same ids: the same
    token -> id table (added tokens included), the same BOS / EOS / UNK, the same ids for a few probe texts."""
    diff = tokenizer_difference(other_tok, student_tok, who)
    if diff:
        raise EmotuneError(f"{key}: the {who}'s tokenizer is not the student's ({diff}); {why}")


def tokenizer_difference(t, s, who: str = "teacher") -> str | None:
    tv, sv = t.get_vocab(), s.get_vocab()
    pad = s.pad_token
    if pad is not None and pad not in tv and sv.get(pad) == len(sv) - 1:  # the run's `pad_token: add`, the last id:
        sv = {k: v for k, v in sv.items() if k != pad}  # never a target (the rows' count is checked on its own)
    if tv != sv:
        if len(tv) != len(sv):
            return f"{len(tv)} tokens, the student's {len(sv)}"
        # the lowest id where the tables differ, the other's token first: a set's order follows the string hash
        # seed, so without the tie-break the message (and the test matching it) changed from run to run
        token = min((k for k in tv.keys() | sv.keys() if tv.get(k) != sv.get(k)),
                    key=lambda k: (min(tv.get(k, 1 << 62), sv.get(k, 1 << 62)), k not in tv, k))
        if token not in sv or token not in tv:
            return f"token {token!r} is only in the {who if token in tv else 'student'}'s vocabulary"
        return f"token {token!r} is id {tv[token]} for the {who}, {sv[token]} for the student"
    for name in SPECIAL_TOKENS:
        if getattr(t, name) != getattr(s, name):
            return f"{name} {getattr(t, name)!r}, the student's {getattr(s, name)!r}"
    for text in PROBES:
        ti, si = t(text)["input_ids"], s(text)["input_ids"]
        if ti != si:
            return f"{text[:20]!r}... is {ti[:8]}... for the {who}, {si[:8]}... for the student"
    return None
