"""Evaluation tasks as data: `configs/eval/tasks/<name>.yaml`, grouped into suites by `configs/eval/suites.yaml`
(shipped inside the package, emotune/configs/eval; a task file of your own is given by its path).

A task file says *what* to evaluate (dataset, splits, columns, templates); the code in icl.py / mmlu.py /
generation.py says *how*. Every task has a `kind`:

    kind: icl          # OpenICL-style TopK + PPL classification (icl.py)
    kind: mmlu         # OpenCompass mmlu_ppl 5-shot (mmlu.py)
    kind: generation   # open-ended generation + MAUVE (generation.py)
    kind: oracle       # the synthetic language's oracle metrics (oracle.py)

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

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from emotune.errors import EmotuneError, one_line, yaml_error
from emotune.resources import resolve, shipped

CONFIG_DIR = shipped("eval")  # the shipped tasks/ and suites.yaml (importlib.resources)
KINDS = ("icl", "mmlu", "generation", "oracle")
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
LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


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
    if kind in ("generation", "oracle"):  # validated by their own modules
        return task
    if kind == "mmlu":
        task.index_split = str(cfg.get("dev_split", "dev"))
        return task

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
    try:
        cfg = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except OSError as err:
        raise EmotuneError(f"{path}: cannot read task file ({err.strerror})") from None
    except UnicodeDecodeError:
        raise EmotuneError(f"{path}: not a text file (invalid UTF-8); a task file is YAML") from None
    except yaml.YAMLError as err:
        raise yaml_error(path, err) from None
    return task_from_dict(cfg, str(path))


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
    try:
        suites = yaml.safe_load(path.read_text()) or {}
    except OSError as err:
        raise EmotuneError(f"{path}: cannot read suites ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise yaml_error(path, err) from None
    if name not in suites:
        raise EmotuneError(f"{path}: unknown suite {name!r} (known: {', '.join(suites)})")
    members = suites[name]
    if not isinstance(members, list) or not members:
        raise EmotuneError(f"{path}: key {name!r} must be a non-empty list of task names")
    return [load_task(str(t), config_dir) for t in members]


# ---------------------------------------------------------------- reading data

_SLICE = re.compile(r"^(?P<split>[\w.-]+)(\[(?P<a>-?\d*)(?P<ap>%?):(?P<b>-?\d*)(?P<bp>%?)\])?$")


def parse_split(spec: str, source: str, key: str) -> tuple[str, tuple | None]:
    m = _SLICE.match(spec.strip())
    if not m:
        raise EmotuneError(f"{source}: key {key!r}: cannot parse split {spec!r} (use e.g. 'train' or 'train[:30%]')")
    if m.group(2) is None:
        return m.group("split"), None
    return m.group("split"), (m.group("a"), m.group("ap"), m.group("b"), m.group("bp"))


def apply_slice(rows: list[dict], sl: tuple | None) -> list[dict]:
    """`datasets`' slicing semantics: percent boundaries round to the closest row."""
    if sl is None:
        return rows
    n = len(rows)

    def bound(value: str, pct: str, default: int) -> int:
        if value == "":
            return default
        v = int(value)
        return int(round(v * n / 100.0)) if pct else v

    a, ap, b, bp = sl
    return rows[bound(a, ap, 0):bound(b, bp, n)]


def _find_local(data_dir: Path, split: str) -> Path | None:
    for suffix in LOCAL_SUFFIXES:
        p = data_dir / f"{split}{suffix}"
        if p.exists():
            return p
    return None


def read_local(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a local JSONL (or JSON list), CSV or parquet file."""
    path = Path(path)
    if not path.exists():
        raise EmotuneError(f"{path}: data file not found")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            line = data[: err.start].count(b"\n") + 1
            raise EmotuneError(f"{path}:{line}: not UTF-8 text (a binary file?)") from None
        if suffix == ".json" and text.lstrip().startswith("["):
            try:
                rows = list(json.loads(text))
            except json.JSONDecodeError as err:
                raise EmotuneError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
            for n, row in enumerate(rows, 1):
                if not isinstance(row, dict):
                    raise EmotuneError(f"{path}: record {n} is not a JSON object")
            return rows
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise EmotuneError(f"{path}:{i}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise EmotuneError(f"{path}:{i}: each line must be a JSON object")
            rows.append(row)
        return rows
    if suffix == ".csv":
        import pandas as pd

        try:
            return pd.read_csv(path, keep_default_na=False).to_dict("records")
        except Exception as err:  # pandas raises many types for malformed files
            raise EmotuneError(f"{path}: cannot read CSV ({one_line(err)})") from None
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as err:
            raise EmotuneError(f"{path}: cannot read parquet ({one_line(err)})") from None
    raise EmotuneError(f"{path}: unsupported data file type (use {', '.join(LOCAL_SUFFIXES)})")


def _load_hub(task: Task, split: str) -> list[dict[str, Any]]:
    import datasets

    ds = task.dataset
    if "path" not in ds:
        raise EmotuneError(f"{task.source}: key 'dataset' needs 'path' (a hub id) or 'data_files' (local files)")
    try:
        data = datasets.load_dataset(ds["path"], ds.get("name"), split=split, revision=ds.get("revision"))
    except Exception as err:  # offline, unknown id, missing split ...: one clear line, no traceback
        raise EmotuneError(f"{task.source}: cannot load dataset {ds['path']!r} (config {ds.get('name')!r}, "
                           f"split {split!r}, revision {ds.get('revision')!r}): {type(err).__name__}: {one_line(err)}. "
                           "Offline, give local files with dataset.data_files or data_dir=DIR") from None
    return data.to_list()


def load_split(task: Task, spec: str, data_dir: str | Path | None = None, key: str = "test_split") -> list[dict]:
    """The rows of one split of a task (sliced if the spec carries a slice); local files win over the hub."""
    split, sl = parse_split(spec, task.source, key)
    files = task.dataset.get("data_files") or {}
    if not isinstance(files, dict):
        raise EmotuneError(f"{task.source}: key 'dataset.data_files' must map split names to files")
    local = None
    if data_dir is not None:
        d = Path(data_dir)
        local = _find_local(d / task.name, split) or _find_local(d, split)
        if local is None:
            raise EmotuneError(f"data_dir {d}: no {split}.jsonl/.csv/.parquet for task {task.name!r} "
                               f"(looked in {d / task.name} and {d})")
    elif split in files:
        local = Path(files[split])
        if not local.is_absolute() and task.source not in ("<memory>",):
            local = Path(task.source).parent / local if not local.exists() else local
    rows = read_local(local) if local is not None else _load_hub(task, split)
    return apply_slice(rows, sl)


def check_columns(task: Task, rows: list[dict], split: str, columns: list[str]) -> None:
    if not rows:
        raise EmotuneError(f"{task.source}: split {split!r} of task {task.name!r} has no rows")
    for n, row in enumerate(rows, 1):  # every row: a later row without a column must not crash mid-run
        missing = [c for c in columns if c not in row or row[c] is None]
        if missing:
            raise EmotuneError(f"{task.source}: split {split!r} row {n} of {len(rows)} has no column {missing[0]!r} "
                               f"(key 'input_columns'/'label_column'; columns present: {sorted(k for k in row if row[k] is not None)})")


def check_task_data(task: Task, data_dir: str | Path | None = None) -> None:
    """Read an ICL task's splits and check every row (columns, labels) before any model is loaded, so bad
    data is one line in a second rather than after loading a 13B model. Other kinds check their own."""
    if task.kind != "icl":
        return
    needed = [*task.input_columns, task.label_column]
    for key, spec in (("index_split", task.index_split), ("test_split", task.test_split)):
        rows = load_split(task, spec, data_dir, key=key)
        check_columns(task, rows, spec, needed)
        for i, row in enumerate(rows):
            task.label_key(row[task.label_column], f"split {spec!r} row {i + 1}")
