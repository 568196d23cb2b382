"""Evaluation tasks as data: `configs/eval/tasks/<name>.yaml`, grouped into suites by `configs/eval/suites.yaml`
(shipped inside the package, emotune/configs/eval; a task file of your own is given by its path).

A task file says *what* to evaluate (dataset, splits, columns, templates); the evaluator (emotune.eval)
says *how*. Every task has a `kind`:

    kind: icl          # OpenICL-style TopK + PPL classification (eval/icl/classification.py)
    kind: mmlu         # OpenCompass mmlu_ppl 5-shot (eval/icl/mmlu.py)
    kind: generation   # open-ended generation + MAUVE (eval/generation/task.py)
    kind: oracle       # the synthetic language's oracle metrics (eval/oracle_task.py, synthetic/oracle.py)
    kind: instruct     # instruction following: responses + a local pairwise judge (eval/instruct/)

This module only reads and checks task files and suites (yaml, no torch), so the evaluator and the
scheduler (which hashes a suite's task definitions into its version) can both use it without depending on
each other; reading a task's data is emotune.eval.task_data.

Data comes from the hub (`dataset.path` [+ `name`, `revision`]; script-based datasets through their
`refs/convert/parquet` revision, since datasets>=4 no longer runs scripts) or from local JSONL/CSV/parquet
files with the same columns (`dataset.data_files: {split: file}`, or the `data_dir` option: a folder holding
`<split>.jsonl|csv|parquet`). A split may carry a slice as in `datasets`: `train[:30%]`, `train[10:200]`.

Templates are written in our short form (`'Review: <X> It is positive.'`, the demos go before it) or
ported from OpenICL unchanged: a template holding the ice token (`</E>` unless the key `ice_token` names
another) gets the demos at that token, and the placeholders may be OpenICL's (`column_token_map:
{text: '</text>'}` is accepted for `input_columns`). Both are rendered exactly as OpenICL renders them.

Everything that can be wrong in a task file is checked here and reported as an EmotuneError naming the
file and key, before any model is loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from emotune.atomic import read_user_yaml
from emotune.errors import EmotuneError
from emotune.plumbing import task_file_line
from emotune.resources import resolve, shipped
from emotune.shards import check_shardable, check_shards

CONFIG_DIR = shipped("eval")  # the shipped tasks/ and suites.yaml (importlib.resources)
KINDS = ("icl", "mmlu", "generation", "oracle", "instruct")
# The evaluator's scoring protocol: bump it when a default that changes scores changes, so that the
# scheduler re-evaluates what an older protocol stored (2: OpenICL's tokenizer round trip before
# retrieval by default, tokens equal to EOS left out of the score also when BOS is EOS).
PROTOCOL = 2
ICE_TOKEN = "</E>"  # OpenICL's ice token: where a template wants the in-context examples
# a task name becomes a directory name, a file name and part of a SLURM job name
NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
# placeholder-like tokens: OpenICL's `</name>` convention and our `<X>`, `<X1>` ... (`</s>` is a real token,
# and a `</b>` after a `<b>` is markup)
_TOKEN_LIKE = re.compile(r"</(?!s>)([A-Za-z_][\w-]*)>|<X\d*>")


def _stray_token(text: str) -> str | None:
    for m in _TOKEN_LIKE.finditer(text):
        if m.group(1) is None or f"<{m.group(1)}" not in text:
            return m.group()
    return None


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
    shards: int = 1  # jobs the scheduler splits the test rows into (emotune.shards); not part of the results

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


# ---------------------------------------------------------------- reading task files

def read_task_file(model: type[BaseModel], raw: dict[str, Any], source: str):
    """`raw` (a task file's mapping) validated by `model`; EmotuneError naming the key otherwise."""
    try:
        return model(**raw)
    except ValidationError as err:
        raise EmotuneError(task_file_line(err, source)) from None


class IclTaskFile(BaseModel):
    """Every key a `kind: icl` task file may hold, with its type; what the keys must say together
    (placeholders, ice token, templates) is checked by task_from_dict and check_templates."""

    model_config = ConfigDict(extra="forbid")
    name: str | int
    kind: Literal["icl"]
    dataset: dict[str, Any] | None = None  # path / name / revision (hub) or data_files (local)
    index_split: str = "train"  # the retrieval index (demos)
    test_split: str = "test"
    input_columns: list[Any] | dict[str, Any] | str | None = None  # column(s) -> placeholder
    column_token_map: dict[str, Any] | None = None  # OpenICL's name for input_columns
    label_column: str | int = "label"
    templates: dict[Any, Any]  # label -> template, in template order
    ice_num: Annotated[int, Field(strict=True, ge=0)] = 8
    ice_token: Any = ICE_TOKEN
    options: dict[str, Any] | None = None  # per-task protocol settings (scoring)
    shards: Any = 1  # checked by emotune.shards.check_shards


def _need(cfg: dict, key: str, source: str, types: type | tuple = object) -> Any:
    if key not in cfg:
        raise EmotuneError(f"{source}: missing key {key!r}")
    value = cfg[key]
    if not isinstance(value, types):
        raise EmotuneError(f"{source}: key {key!r} has the wrong type ({type(value).__name__})")
    return value


def task_from_dict(cfg: dict[str, Any], source: str = "<memory>") -> Task:
    if not isinstance(cfg, dict):
        raise EmotuneError(f"{source}: a task file must be a YAML mapping")
    name = str(_need(cfg, "name", source, (str, int)))
    if not NAME_RE.fullmatch(name) or name in (".", ".."):
        raise EmotuneError(f"{source}: key 'name' must be letters, digits, '.', '_' or '-' (it becomes a "
                           f"directory and job name; got {name!r})")
    kind = _need(cfg, "kind", source, str)
    if kind not in KINDS:
        raise EmotuneError(f"{source}: key 'kind' must be one of {', '.join(KINDS)} (got {kind!r})")
    dataset = cfg.get("dataset") or {}
    if not isinstance(dataset, dict):
        raise EmotuneError(f"{source}: key 'dataset' must be a mapping (path/name/revision or data_files)")
    task = Task(name=name, kind=kind, source=source, dataset=dict(dataset), raw=dict(cfg),
                test_split=str(cfg.get("test_split", "test")), index_split=str(cfg.get("index_split", "train")),
                options=dict(cfg.get("options") or {}))
    if "shards" in cfg:
        task.shards = check_shards(cfg["shards"], source)
        check_shardable(kind, task.shards, source)
    if kind in ("generation", "oracle", "instruct"):  # validated by their own modules
        return task
    if kind == "mmlu":
        task.index_split = str(cfg.get("dev_split", "dev"))
        return task
    read_task_file(IclTaskFile, cfg, source)

    cols_key = "column_token_map" if "column_token_map" in cfg else "input_columns"  # OpenICL's name for it
    if cols_key == "column_token_map" and "input_columns" in cfg:
        raise EmotuneError(f"{source}: give 'input_columns' or 'column_token_map', not both")
    cols = _need(cfg, cols_key, source, (list, dict, str) if cols_key == "input_columns" else dict)
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
    templates = _need(cfg, "templates", source, dict)
    check_templates(templates, task.input_columns, task.ice_token, source, cols_key)
    task.templates = dict(templates)
    ice_num = cfg.get("ice_num", 8)
    if not isinstance(ice_num, int) or ice_num < 0:
        raise EmotuneError(f"{source}: key 'ice_num' must be a non-negative integer")
    task.ice_num = ice_num
    return task


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


def load_task_file(path: str | Path) -> Task:
    path = Path(path)
    return task_from_dict(read_user_yaml(path, "task file"), str(path))


def load_task(name_or_path: str, config_dir: Path = CONFIG_DIR) -> Task:
    """A task by name (`configs/eval/tasks/<name>.yaml`) or by the path of a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return load_task_file(resolve(p, "task"))  # the user's file, else a shipped one of that path
    candidate = config_dir / "tasks" / f"{name_or_path}.yaml"
    if not candidate.exists():
        known = sorted(f.stem for f in (config_dir / "tasks").glob("*.yaml"))
        raise EmotuneError(f"unknown task {name_or_path!r} (no {candidate}; known: {', '.join(known)})")
    return load_task_file(candidate)


def load_suite(name: str, config_dir: Path = CONFIG_DIR) -> list[Task]:
    path = config_dir / "suites.yaml"
    suites = read_user_yaml(path, "suites") or {}
    if name not in suites:
        raise EmotuneError(f"{path}: unknown suite {name!r} (known: {', '.join(suites)})")
    members = suites[name]
    if isinstance(members, dict):  # {evaluator: ..., tasks: [...]}
        from emotune.harness_tasks import HARNESS, suite_evaluator

        if suite_evaluator(members, f"{path}: suite {name!r}") == HARNESS:
            raise EmotuneError(f"{path}: suite {name!r} is run by lm-evaluation-harness (evaluator: lm_eval), "
                               f"not by our evaluator: emotune eval --suite {name} ... or --evaluator lm_eval")
        members = members.get("tasks")
    if not isinstance(members, list) or not members:
        raise EmotuneError(f"{path}: key {name!r} must be a non-empty list of task names")
    return [load_task(str(t), config_dir) for t in members]
