"""What every command reads from its user the same way, written once: `key=value` overrides and settings, the
launcher's `--local_rank`, and a pydantic ValidationError as the one line that names the key at fault.

Torch-free and below every stage (train, eval, launch and the pipeline import it; it imports none of them).
"""

from __future__ import annotations

import copy
import os
from typing import Any, NamedTuple

import yaml

from emotune.errors import EmotuneError

# ---------------------------------------------------------------- key=value


def yaml_scalar(raw: str) -> Any:
    """A `key=value`'s value as YAML reads it (`1e-5`, `true`, `[a, b]`), the text itself where it is no valid
    YAML; an empty value is None."""
    try:
        return yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        return raw


def parse_override(item: str) -> tuple[list[str], Any]:
    """A config override `data.block_size=128` -> (["data", "block_size"], 128)."""
    if "=" not in item or item.startswith("="):
        raise EmotuneError(f"command-line override {item!r} is not key=value (e.g. learning_rate=1e-5, data.block_size=128)")
    key, raw = item.split("=", 1)
    return key.strip().split("."), yaml_scalar(raw)


def _list_index(node: list, part: str, item: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise EmotuneError(f"override {item!r}: {part!r} is not an index of a list of {len(node)}")
    return int(part)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set dotted keys (`data.block_size=128`); a number indexes a list (`runs.1.matrix.seed=[0]`)."""
    data = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            if isinstance(node, list):
                node = node[_list_index(node, part, item)]
                continue
            if not isinstance(node.get(part, {}), (dict, list)):
                raise EmotuneError(f"override {item!r}: {part!r} is not a section")
            node = node.setdefault(part, {})
        if isinstance(node, list):
            node[_list_index(node, path[-1], item)] = value
        else:
            node[path[-1]] = value
    return data


def key_values(items: list[str], known, whose: str = "") -> dict[str, Any]:
    """Flat `key=value` settings (an evaluator's or judge's options) -> {key: value}, each value a YAML scalar;
    a key not in `known` is one error line naming the argument (`whose`: which options, for the message)."""
    keys = ", ".join(known)
    values: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise EmotuneError(f"argument {item!r}: expected key=value (keys: {keys})")
        if key not in known:
            raise EmotuneError(f"argument {item!r}: unknown key {key!r}{whose} (keys: {keys})")
        values[key] = yaml_scalar(value)
    return values


# ---------------------------------------------------------------- --local_rank

def split_local_rank(argv: list[str]) -> tuple[list[str], str | None]:
    """`argv` without the `--local_rank=N` (or `--local_rank N`, `--local-rank`) a launcher adds, wherever it
    lands, and N (the first one given; None without one).

    `deepspeed --module emotune train CFG` and `deepspeed $(which emotune) train CFG` put it *before* the
    command; `deepspeed --module emotune.launch.train_entry CFG` after it."""
    out, rank, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        name, sep, value = arg.partition("=")
        if name in ("--local_rank", "--local-rank"):
            if not sep:
                if i + 1 >= len(argv):
                    raise EmotuneError(f"{name} needs a value")
                value, i = argv[i + 1], i + 1
            if not value.isdigit():
                raise EmotuneError(f"{name}: expected a rank number, got {value!r}")
            rank = value if rank is None else rank
        else:
            out.append(arg)
        i += 1
    return out, rank


def take_local_rank(argv: list[str]) -> list[str]:
    """`argv` without the launcher's `--local_rank`, whose value goes to LOCAL_RANK (where torchrun puts it and
    where the training stage reads it; a LOCAL_RANK already set wins)."""
    argv, rank = split_local_rank(argv)
    if rank is not None:
        os.environ.setdefault("LOCAL_RANK", rank)
    return argv


# ---------------------------------------------------------------- a ValidationError as one line

class Problem(NamedTuple):
    """The first problem of a pydantic ValidationError: what every one-line message is made of."""

    loc: tuple  # where: ("data", "block_size"), ("runs", 1, "train")
    type: str  # pydantic's error type: "extra_forbidden", "missing", "int_parsing", "value_error", ...
    msg: str  # pydantic's message, without the "Value error, " of our own validators' errors
    raw_msg: str  # pydantic's message as it is
    detail: dict  # pydantic's error entry ("input": the rejected value, where it has one)
    count: int  # how many problems in all

    def dotted(self, indices: bool = True) -> str:
        return ".".join(str(p) for p in self.loc if indices or not isinstance(p, int))

    def got(self) -> str:
        return f" (got {self.detail.get('input')!r})"


def first_problem(err) -> Problem:
    """`err` (a pydantic ValidationError) reduced to its first problem."""
    errors = err.errors()
    first = errors[0]
    return Problem(tuple(first["loc"]), first["type"], first["msg"].removeprefix("Value error, "), first["msg"], first,
                   len(errors))


def config_line(err, source: str, unknown: str = "unknown key", missing: str | None = None, more: bool = False) -> str:
    """A config file's first problem: `SOURCE: dotted.key: what is wrong (got VALUE)`; `unknown` / `missing`
    word an unknown / a missing key (None: pydantic's words), `more` counts the other problems."""
    p = first_problem(err)
    msg = p.msg
    if p.type == "extra_forbidden":
        msg = unknown
    elif p.type == "missing" and missing is not None:
        msg = missing
    elif p.type not in ("missing", "value_error") and "input" in p.detail:
        msg += p.got()
    extra = f" (and {p.count - 1} more problem(s))" if more and p.count > 1 else ""
    return f"{source}: {p.dotted() or '(top level)'}: {msg}{extra}"


def task_file_line(err, source: str) -> str:
    """A task file's first problem, naming the file and the dotted key (list positions left out)."""
    p = first_problem(err)
    key = p.dotted(indices=False)
    if p.type in ("extra_forbidden", "missing"):
        what = "unknown key" if p.type == "extra_forbidden" else "missing key"
        return f"{source}: {what} {key!r}"
    return f"{source}: key {key!r}: {p.msg}{p.got()}"


def argument_line(err, values: dict[str, Any], prefix: str = "argument", unknown: str = "") -> str:
    """A `key=value` setting's problem: `argument batch_size=0: must be a positive integer` (`values`: the
    settings as given, `prefix`: what they are, `unknown`: added to an unknown key's message)."""
    p = first_problem(err)
    key = str(p.loc[0]) if p.loc else "?"
    if p.type == "extra_forbidden":
        return f"{prefix} {key!r}: unknown key{unknown}"
    msg = p.msg
    if p.type in ("greater_than_equal", "int_type", "int_parsing") and key not in ("seed",):
        msg = "must be a positive integer"
    elif p.type in ("bool_type", "bool_parsing"):
        msg = "must be true or false"
    return f"{prefix} {key}={values.get(key)!r}: {msg}"
