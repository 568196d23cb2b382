"""One evaluation task as read from its task file (emotune.tasks.files reads it; the evaluator runs it)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from emotune.errors import EmotuneError

# The evaluator's scoring protocol: bump it when a default that changes scores changes, so that the
# scheduler re-evaluates what an older protocol stored (2: OpenICL's tokenizer round trip before
# retrieval by default, tokens equal to EOS left out of the score also when BOS is EOS).
PROTOCOL = 2
ICE_TOKEN = "</E>"  # OpenICL's ice token: where a template wants the in-context examples
# a task name becomes a directory name, a file name and part of a SLURM job name
NAME_RE = re.compile(r"[A-Za-z0-9._-]+")


def check_name(name: str, source: str, key: str = "name") -> None:
    """A task name becomes a directory and job name: letters, digits, '.', '_' or '-', not '.' or '..'."""
    if not NAME_RE.fullmatch(name) or name in (".", ".."):
        raise EmotuneError(f"{source}: key {key!r} must be letters, digits, '.', '_' or '-' (it becomes a "
                           f"directory and job name; got {name!r})")


def need(cfg: dict, key: str, source: str, types: type | tuple = object) -> Any:
    """`cfg[key]`, which must be there and of `types` (one line naming the file and key otherwise)."""
    if key not in cfg:
        raise EmotuneError(f"{source}: missing key {key!r}")
    value = cfg[key]
    if not isinstance(value, types):
        raise EmotuneError(f"{source}: key {key!r} has the wrong type ({type(value).__name__})")
    return value


@dataclass
class Task:
    """One evaluation task, as read from its YAML file (`raw` keeps every key for kinds defined elsewhere)."""

    name: str
    kind: str
    source: str  # the YAML file (or "<memory>") — named in every error message
    dataset: dict[str, Any] = field(default_factory=dict)
    test_split: str = "test"
    index_split: str = "train"
    input_columns: dict[str, str] = field(default_factory=dict)  # column -> placeholder in templates
    label_column: str = "label"
    templates: dict[Any, str] = field(default_factory=dict)  # label -> template, in template order
    ice_num: int = 8
    ice_token: str = ICE_TOKEN  # templates holding it get the demos there (OpenICL); others get them in front
    options: dict[str, Any] = field(default_factory=dict)  # per-task protocol settings (scoring, ...)
    raw: dict[str, Any] = field(default_factory=dict)
    shards: int = 1  # jobs the scheduler splits the test rows into (emotune.tasks.shards); not part of the results

    @property
    def definition(self) -> dict[str, Any]:
        """What the task's results depend on: the file's keys but `shards` (a sharded task's merged result
        is the unsharded one exactly, so changing it re-evaluates nothing)."""
        return {k: v for k, v in self.raw.items() if k != "shards"}

    @property
    def labels(self) -> list[Any]:
        return list(self.templates)

    def input_text(self, row: dict[str, Any]) -> str:
        """The raw input the retriever embeds: `' '.join` of the input columns (OpenICL's DatasetReader)."""
        return " ".join(str(row[c]) for c in self.input_columns)

    def fill(self, label: Any, row: dict[str, Any]) -> str:
        """A demo: `templates[label]` without the ice token, every placeholder replaced by its column's
        value (OpenICL's `generate_ice_item`)."""
        return self._placeholders(self.templates[label].replace(self.ice_token, ""), row)

    def prompt(self, label: Any, row: dict[str, Any], ice: str) -> str:
        """A candidate prompt: the ICE block put at the ice token (in front of a template without one),
        then the placeholders replaced, in OpenICL's order (`generate_label_prompt_item`)."""
        template = self.templates[label]
        if self.ice_token not in template:
            template = self.ice_token + template
        return self._placeholders(template.replace(self.ice_token, ice), row)

    def _placeholders(self, text: str, row: dict[str, Any]) -> str:
        for column, token in self.input_columns.items():
            text = text.replace(token, str(row[column]))
        return text

    def label_key(self, value: Any, where: str) -> Any:
        """The template key a data label refers to (`1`, `"1"` and `1.0` all match template key 1)."""
        lookup = {_label_str(k): k for k in self.templates}
        key = lookup.get(_label_str(value))
        if key is None:
            raise EmotuneError(f"{where}: label {value!r} in column {self.label_column!r} has no template in "
                               f"{self.source} (key 'templates'; known labels: {list(self.templates)})")
        return key


def _label_str(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()

