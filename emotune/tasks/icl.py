"""The grammar of a `kind: icl` task file beyond its keys' types (emotune.tasks.schema.IclTaskFile): input
columns and their placeholders, templates and the ice token, rendered exactly as OpenICL renders them.

Templates are written in our short form (`'Review: <X> It is positive.'`, the demos go before it) or
ported from OpenICL unchanged: a template holding the ice token (`</E>` unless the key `ice_token` names
another) gets the demos at that token, and the placeholders may be OpenICL's (`column_token_map:
{text: '</text>'}` is accepted for `input_columns`).
"""

from __future__ import annotations

import re
from typing import Any

from emotune.errors import EmotuneError
from emotune.tasks.schema import IclTaskFile, read_task_file
from emotune.tasks.task import ICE_TOKEN, Task, need

# placeholder-like tokens: OpenICL's `</name>` convention and our `<X>`, `<X1>` ... (`</s>` is a real token,
# and a `</b>` after a `<b>` is markup)
_TOKEN_LIKE = re.compile(r"</(?!s>)([A-Za-z_][\w-]*)>|<X\d*>")


def _stray_token(text: str) -> str | None:
    for m in _TOKEN_LIKE.finditer(text):
        if m.group(1) is None or f"<{m.group(1)}" not in text:
            return m.group()
    return None




def read_mmlu(task: Task, cfg: dict[str, Any], source: str) -> None:
    """A `kind: mmlu` task's demos come from its dev split (OpenCompass' 5-shot protocol)."""
    task.index_split = str(cfg.get("dev_split", "dev"))


def read_icl(task: Task, cfg: dict[str, Any], source: str) -> None:
    """Fill an ICL task's columns, templates and ice settings from its task file, each checked."""
    read_task_file(IclTaskFile, cfg, source)

    cols_key = "column_token_map" if "column_token_map" in cfg else "input_columns"  # OpenICL's name for it
    if cols_key == "column_token_map" and "input_columns" in cfg:
        raise EmotuneError(f"{source}: give 'input_columns' or 'column_token_map', not both")
    cols = need(cfg, cols_key, source, (list, dict, str) if cols_key == "input_columns" else dict)
    if isinstance(cols, str):
        cols = [cols]
    if isinstance(cols, list):
        if len(cols) != 1:
            raise EmotuneError(f"{source}: key 'input_columns' with several columns must map each column to its "
                               "placeholder, e.g. {premise: '<X1>', hypothesis: '<X2>'}")
        cols = {str(cols[0]): "<X>"}
    task.input_columns = {str(k): str(v) for k, v in cols.items()}
    task.label_column = str(cfg.get("label_column", "label"))
    task.ice_token = cfg.get("ice_token", ICE_TOKEN)
    templates = need(cfg, "templates", source, dict)
    check_templates(templates, task.input_columns, task.ice_token, source, cols_key)
    task.templates = dict(templates)
    ice_num = cfg.get("ice_num", 8)
    if not isinstance(ice_num, int) or ice_num < 0:
        raise EmotuneError(f"{source}: key 'ice_num' must be a non-negative integer")
    task.ice_num = ice_num


def check_templates(templates: dict, placeholders: dict[str, str], ice_token: Any, source: str,
                    key: str = "input_columns") -> None:
    """Reject what cannot render as meant: a template without any placeholder (the test input would not be
    in it), placeholders that overlap (replacing one would eat into another), an ice token in some
    templates only or twice in one, and placeholder-like tokens that nothing replaces (OpenICL's `</E>` or
    `</text>` would stay in every prompt as text). As in OpenICL, a template need not hold every
    placeholder (a multiple-choice template shows only its own answer's column)."""
    if not isinstance(ice_token, str) or not ice_token.strip():
        raise EmotuneError(f"{source}: key 'ice_token' must be a non-empty string (OpenICL's is {ICE_TOKEN!r})")
    tokens = list(placeholders.values())
    for i, (column, a) in enumerate(placeholders.items()):
        if not a:
            raise EmotuneError(f"{source}: key {key!r}: the placeholder of column {column!r} is empty")
        others = [("placeholder", b) for b in tokens[i + 1:]] + [("the ice token", ice_token)]
        for what, b in others:
            if a in b or b in a:
                raise EmotuneError(f"{source}: key {key!r}: placeholder {a!r} overlaps {what} {b!r}; "
                                   "each must be distinct and no part of another")
    if len(templates) < 2:
        raise EmotuneError(f"{source}: key 'templates' needs at least two labels")
    with_ice = []
    for label, template in templates.items():
        if not isinstance(template, str):
            raise EmotuneError(f"{source}: key 'templates.{label}' must be a string")
        if not any(token in template for token in tokens):  # the test input would not be in the prompt
            which = f"no {tokens[0]} placeholder" if len(tokens) == 1 else f"none of the placeholders {', '.join(tokens)}"
            raise EmotuneError(f"{source}: key 'templates.{label}' has {which}: {template!r}")
        n = template.count(ice_token)
        if n > 1:
            raise EmotuneError(f"{source}: key 'templates.{label}' holds the ice token {ice_token!r} {n} times "
                               f"(the demos go in once): {template!r}")
        with_ice.append(n == 1)
        rest = template.replace(ice_token, "")
        for token in tokens:
            rest = rest.replace(token, "")
        stray = _stray_token(rest)
        if stray:
            raise EmotuneError(f"{source}: key 'templates.{label}': {stray!r} is neither a placeholder of "
                               f"{key!r} ({', '.join(tokens)}) nor the ice token {ice_token!r}, so it would stay "
                               f"in every prompt as text: {template!r}")
    if any(with_ice) and not all(with_ice):
        label = list(templates)[with_ice.index(False)]
        raise EmotuneError(f"{source}: key 'templates.{label}' has no ice token {ice_token!r} while other "
                           "templates have one: put it in every template (OpenICL) or in none")

