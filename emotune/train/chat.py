"""Conversations (`data.format: chat`): parsing, checking, rendering with the tokenizer's chat template, and the
assistant-only loss mask.

A record holds one conversation in either layout Hugging Face / TRL users have:

    {"messages":      [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}   # OpenAI, TRL
    {"conversations": [{"from": "system" | "human" | "gpt", "value": "..."}, ...]}          # ShareGPT

The field is `data.messages_column`, or (unset) whichever of the two the record has; the layout of each turn is
read from its keys (role/content or from/value), so a ShareGPT file under `messages` works too. Both become
role/content messages, which the tokenizer's chat template (or `data.chat_template`) renders.

Loss on the assistant turns only, all of them. The mask does not rely on `{% generation %}` in the template (few
templates have it). For assistant turn k, rendering the turns before it with the generation prompt ends where
its reply starts; rendering the turns up to and including it ends where the reply and the end-of-turn tokens the
template puts after it end. Each rendered prefix, tokenised, must begin the tokenised full rendering token for
token; a template for which that fails (it renders earlier turns differently depending on what follows, or its
tokens merge across a turn boundary) is refused, since no mask drawn from it would be right.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from emotune.errors import EmotuneError, one_line
from emotune.local_records import MISSING, field_of
from emotune.objectives.common import IGNORE_INDEX

log = logging.getLogger("emotune.data")

LAYOUTS = {  # a turn's layout -> (role key, content key, {the roles it allows: the role/content role})
    "role": ("role", "content", {"system": "system", "user": "user", "assistant": "assistant"}),
    "from": ("from", "value", {"system": "system", "human": "user", "gpt": "assistant"}),
}
AUTO_COLUMNS = ("messages", "conversations")


# ----------------------------------------------------------------------------------------------
# one record -> role/content messages, checked

def conversation_of(row: dict, d, where: str) -> list[dict]:
    """The record's conversation as `[{role, content}]`; every problem is one EmotuneError naming `where`
    (the file and line) and the field at fault."""
    key = d.messages_column
    if key is None:
        key = next((k for k in AUTO_COLUMNS if k in row), None)
        if key is None:
            raise EmotuneError(f"{where}: no 'messages' or 'conversations' field (fields: {sorted(row)}); "
                               "check the file or set data.messages_column")
    elif field_of(row, key) is MISSING:
        raise EmotuneError(f"{where}: no {key!r} field (fields: {sorted(row)}); check the file or data.messages_column")
    turns = field_of(row, key)
    if not isinstance(turns, list):
        raise EmotuneError(f"{where}: field {key!r} must be a list of turns, got {type(turns).__name__}")
    if not turns:
        raise EmotuneError(f"{where}: field {key!r} is an empty conversation")
    messages, layout = [], None
    for i, turn in enumerate(turns, 1):
        at = f"{where}: {key} turn {i}"
        if not isinstance(turn, dict):
            raise EmotuneError(f"{at}: a turn must be an object, got {type(turn).__name__}")
        this = "role" if turn.get("role") is not None else "from" if turn.get("from") is not None else None
        if this is None:
            raise EmotuneError(f"{at}: neither role/content (messages) nor from/value (ShareGPT) (fields: {sorted(turn)})")
        if layout not in (None, this):
            raise EmotuneError(f"{at}: mixes {this}/... turns with {layout}/... turns in one conversation")
        layout = this
        role_key, content_key, roles = LAYOUTS[this]
        role, content = turn[role_key], turn.get(content_key)
        if not isinstance(role, str) or role not in roles:
            raise EmotuneError(f"{at}: unknown {role_key} {role!r} (one of: {', '.join(roles)})")
        if not isinstance(content, str):
            got = "nothing" if content is None else type(content).__name__
            raise EmotuneError(f"{at}: field {content_key!r} must be a string, got {got}")
        messages.append({"role": roles[role], "content": content})
    if any(m["role"] == "system" for m in messages[1:]):
        i = next(n for n, m in enumerate(messages[1:], 2) if m["role"] == "system")
        raise EmotuneError(f"{where}: {key} turn {i}: a system turn may only be the first turn")
    if not any(m["role"] == "assistant" for m in messages):
        raise EmotuneError(f"{where}: field {key!r} has no assistant turn (role assistant / from gpt): nothing to learn")
    return messages


def training_texts(records: list[dict], d) -> list[str]:
    """What a tokenizer trained on the spot learns from: every turn's content, and the template's own text."""
    texts = [" ".join(m["content"] for m in conversation_of(r, d, f"training data: record {n}"))
             for n, r in enumerate(records, 1)]
    template = resolve_template(d)
    return texts + ([template] if template else [])


# ----------------------------------------------------------------------------------------------
# the chat template

def resolve_template(d) -> str | None:
    """`data.chat_template` as template text (itself, or the file it names), compiled once to catch syntax errors."""
    value = d.chat_template
    if value is None:
        return None
    if "{{" in value or "{%" in value:
        text = value
    else:
        from emotune.resources import resolve as resolve_file

        path = resolve_file(value)
        if not path.is_file():
            raise EmotuneError(f"data.chat_template: {value!r} is neither a template file nor a Jinja template "
                               "(a template has {{ ... }} or {% ... %})")
        try:
            text = Path(path).read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise EmotuneError(f"data.chat_template: {path}: not UTF-8 text (a Jinja chat template file?)") from None
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:  # a private helper of transformers: without it, rendering reports the error instead
        return text
    try:
        _compile_jinja_template(text)
    except Exception as err:  # noqa: BLE001 - jinja2.TemplateSyntaxError and friends: one line
        line = getattr(err, "lineno", None)
        raise EmotuneError(f"data.chat_template: not a valid Jinja template{f' (line {line})' if line else ''}: "
                           f"{one_line(err)}") from None
    return text


def template_owner(cfg) -> str:
    """The config key (and value) the tokenizer's chat template comes from, for messages."""
    m = cfg.model
    if m.train_tokenizer_vocab_size:
        return "model.train_tokenizer_vocab_size (a tokenizer trained on the data)"
    if m.tokenizer_name_or_path:
        return f"model.tokenizer_name_or_path ({m.tokenizer_name_or_path})"
    return f"model.name_or_path ({m.name_or_path})"


def prepare_tokenizer(tokenizer, cfg) -> None:
    """Give the tokenizer `data.chat_template` (its exports then carry it, so evaluation renders prompts the same
    way); with `data.format: chat` a tokenizer left without a chat template is an error naming where it came from."""
    template = resolve_template(cfg.data)
    if template is not None:
        tokenizer.chat_template = template
    if cfg.data.format == "chat" and not getattr(tokenizer, "chat_template", None):
        raise no_template_error(cfg)


def no_template_error(cfg) -> EmotuneError:
    return EmotuneError(f"{template_owner(cfg)}: the tokenizer has no chat template (no chat_template in "
                        "tokenizer_config.json, no chat_template.jinja), and data.format: chat renders every "
                        "conversation with it; set data.chat_template to a Jinja template or a file holding one")


# ----------------------------------------------------------------------------------------------
# rendering + the assistant mask

def _render(tokenizer, messages: list[dict], generation_prompt: bool, where: str) -> list[int]:
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as err:  # noqa: BLE001 - a template's raise_exception (e.g. roles must alternate), jinja errors
        raise EmotuneError(f"{where}: the chat template refused this conversation: {one_line(err)}") from None
    # The template writes the special tokens it wants (BOS included); the tokenizer must not add more.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def tokenize_conversation(tokenizer, messages: list[dict], max_length: int,
                          where: str = "conversation") -> tuple[list[int], list[int], bool]:
    """`(input_ids, labels, truncated)`: the rendered conversation; labels are the ids on the tokens of every
    assistant reply and the end-of-turn tokens after it, -100 elsewhere; both cut to `max_length` together."""
    ids = _render(tokenizer, messages, False, where)
    labels = [IGNORE_INDEX] * len(ids)
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = _render(tokenizer, messages[:k], True, where)  # ... up to the reply (the generation prompt)
        end = _render(tokenizer, messages[: k + 1], False, where)  # ... through the reply and its end of turn
        for prefix, upto in ((start, f"turns 1-{k} with the generation prompt"), (end, f"turns 1-{k + 1}")):
            if ids[: len(prefix)] != prefix or len(start) > len(end):
                raise EmotuneError(
                    f"{where}: the chat template is not prefix-consistent: the rendering of {upto} is not a token "
                    "prefix of the whole conversation's, so the assistant tokens cannot be found; use a template "
                    "that renders earlier turns the same whatever follows (data.chat_template)")
        labels[len(start):len(end)] = ids[len(start):len(end)]
    truncated = len(ids) > max_length
    return ids[:max_length], labels[:max_length], truncated


def tokenize_conversations(records: list[dict], tokenizer, d, max_examples: int | None = None,
                           where: str = "data") -> tuple[list, dict]:
    if not getattr(tokenizer, "chat_template", None):
        raise EmotuneError("data.format: chat needs a tokenizer with a chat template; set data.chat_template")
    examples, truncated, dropped, turns = [], 0, 0, 0
    for n, r in enumerate(records, 1):
        at = f"{where}: record {n}"
        messages = conversation_of(r, d, at)
        ids, labels, cut = tokenize_conversation(tokenizer, messages, d.max_length, at)
        truncated += cut
        if all(label == IGNORE_INDEX for label in labels[1:]):  # position 0 is never a target (shift)
            dropped += 1
            continue
        turns += sum(m["role"] == "assistant" for m in messages)
        examples.append((np.asarray(ids, dtype=np.int64), np.asarray(labels, dtype=np.int64)))
        if max_examples is not None and len(examples) >= max_examples:
            break
    if dropped:
        log.warning("%s: %d of %d conversations dropped: every assistant turn was cut by max_length=%d",
                    where, dropped, dropped + len(examples), d.max_length)
    return examples, {"examples": len(examples), "truncated": truncated, "dropped_response_cut": dropped,
                      "assistant_turns": turns}
