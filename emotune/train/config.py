"""The training run's config: one YAML file per run, `key=value` overrides, validated by pydantic.

    cfg = load_config("configs/train/tiny-cpu.yaml", ["learning_rate=1e-4", "data.block_size=64"])

A config is a file path or the name of a shipped config (`tiny-cpu`, `train/tiny-cpu.yaml`, or the
source-tree spelling above): see emotune.resources. The user's own file always wins.

Top-level field names follow Hugging Face `TrainingArguments` wherever one exists (learning_rate,
per_device_train_batch_size, gradient_accumulation_steps, num_train_epochs / max_steps, warmup_ratio,
lr_scheduler_type, weight_decay, bf16, gradient_checkpointing, save_steps, logging_steps, seed...);
what HF has no name for is grouped: `model`, `data`, `objective`, `lora`. Every problem is reported as
one EmotuneError naming the file and the dotted key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from emotune.atomic import read_user_yaml
from emotune.errors import EmotuneError
from emotune.objectives.registry import resolve
from emotune.plumbing import apply_overrides, config_line
from emotune.resources import names as shipped_names
from emotune.resources import resolve as resolve_file


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class ModelConfig(_Strict):
    name_or_path: str | None = None  # local directory or hub id
    config: dict[str, Any] | None = None  # build a fresh model from this HF config dict (tests, tiny runs)
    tokenizer_name_or_path: str | None = None  # default: name_or_path
    # Train a byte-level BPE tokenizer of this vocabulary size on the training data (tiny runs, tests).
    train_tokenizer_vocab_size: int | None = Field(None, ge=64)
    revision: str | None = None
    torch_dtype: Literal["float32", "bfloat16", "float16", "auto"] = "auto"  # auto: bfloat16 if bf16 else float32
    trust_remote_code: bool = False
    attn_implementation: str | None = None
    # No pad token: `eos` reuses EOS (no resize); `add` adds "<pad>" and resizes the embeddings (new rows = mean).
    pad_token: Literal["eos", "add", "unk"] = "eos"
    pad_to_multiple_of: int | None = Field(None, ge=1)  # round the embedding size up after a resize

    @model_validator(mode="after")
    def _one_source(self):
        if (self.name_or_path is None) == (self.config is None):
            raise ValueError("give exactly one of model.name_or_path (pretrained) and model.config (fresh model)")
        if self.config is not None and "model_type" not in self.config:
            raise ValueError("model.config needs a model_type (e.g. llama, gpt2, opt)")
        return self


class DataConfig(_Strict):
    format: Literal["text", "instruction", "chat"] = "text"
    dataset_name: str | None = None  # hub id (e.g. wikitext) ...
    dataset_config_name: str | None = None  # ... and its config (e.g. wikitext-103-raw-v1)
    train_split: str = "train"
    validation_split: str | None = "validation"  # hub split name, if the dataset has one
    train_files: list[str] | None = Field(None, min_length=1)  # local .txt / .jsonl / .json / .parquet
    validation_files: list[str] | None = None
    validation_split_percentage: float = Field(0.0, ge=0, lt=100)  # carve validation from train if no other source
    text_column: str = "text"
    # raw text: packed into blocks of block_size tokens
    block_size: int = Field(256, ge=2)
    # How documents are packed (docs/training.md, *Data*): `group_texts` = HF run_clm's (and the EMO paper's
    # code's): each document as `tokenizer(text)` gives it (its own special tokens, e.g. LLaMA's BOS), groups of
    # `packing_group_size` documents (datasets.map's batch of 1000) concatenated and cut into blocks, each
    # group's remainder dropped; `stream` = all documents one stream, only its last remainder dropped.
    packing: Literal["group_texts", "stream"] = "group_texts"
    packing_group_size: int = Field(1000, ge=1)
    add_eos: bool = False  # append EOS after every document before packing (run_clm does not)
    skip_empty: bool = False  # drop whitespace-only documents (run_clm keeps them: WikiText has many)
    # instruction data (Alpaca: instruction / input / output columns)
    max_length: int = Field(512, ge=2)
    instruction_column: str = "instruction"
    input_column: str = "input"
    output_column: str = "output"
    # conversations (format: chat): the field holding the turns, `messages` ([{role, content}], OpenAI / TRL) or
    # `conversations` ([{from, value}], ShareGPT); unset: whichever of the two each record has
    messages_column: str | None = None
    # a Jinja chat template (the text, or a file holding it) replacing the tokenizer's; saved with the exports
    chat_template: str | None = None
    max_train_samples: int | None = Field(None, ge=1)  # blocks (text) or examples (instruction, chat)
    max_eval_samples: int | None = Field(None, ge=1)
    cache_dir: str | None = None  # tokenised data cache; default <output_dir>/data-cache

    @field_validator("train_files", "validation_files")
    @classmethod
    def _shipped_files(cls, files: list[str] | None) -> list[str] | None:
        # The user's file wins; a name that exists only among the shipped configs (the examples'
        # `configs/train/data/...`) becomes the installed file's path, so every reader sees one path.
        return None if files is None else [str(resolve_file(f)) for f in files]

    @model_validator(mode="after")
    def _one_source(self):
        if (self.dataset_name is None) == (self.train_files is None):
            raise ValueError("give exactly one of data.dataset_name (hub) and data.train_files (local files)")
        if self.format != "chat" and (self.chat_template is not None or self.messages_column is not None):
            key = "chat_template" if self.chat_template is not None else "messages_column"
            raise ValueError(f"data.{key} is for conversations: set data.format: chat (format is {self.format!r})")
        return self


class ObjectiveConfig(_Strict):
    name: str = "emo"
    params: dict[str, Any] = Field(default_factory=dict)
    cost: Literal["frozen", "adaptive", "external"] = "frozen"
    cost_source: str | None = None  # checkpoint directory or hub id for cost=external

    @model_validator(mode="after")
    def _check(self):
        resolve(self.name, self.params)  # raises EmotuneError naming the parameter
        if self.cost == "external" and not self.cost_source:
            raise ValueError("objective.cost=external needs objective.cost_source (a checkpoint directory or hub id)")
        return self


class TeacherConfig(_Strict):
    """The frozen teacher of `objective.params.target: teacher` (names as TRL's GKDConfig: the teacher's
    checkpoint, `temperature`; `top_k` keeps the teacher's k most likely tokens, renormalised)."""

    model: str = Field(validation_alias=AliasChoices("model", "name_or_path", "teacher_model_name_or_path"))
    revision: str | None = None
    torch_dtype: Literal["float32", "bfloat16", "float16", "auto"] = "auto"  # auto: the student's dtype
    temperature: float = Field(1.0, gt=0)
    top_k: int | None = Field(None, ge=1)
    trust_remote_code: bool = False


class LoraConfig(_Strict):
    enabled: bool = False
    r: int = Field(16, ge=1)
    alpha: float = 32.0
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | str = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    export_merged: bool = True  # also write the merged full model beside the adapter


class TrainConfig(_Strict):
    output_dir: str
    model: ModelConfig
    data: DataConfig
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    teacher: TeacherConfig | None = None  # distillation: objective.params.target = teacher
    # --- Hugging Face TrainingArguments names ---
    learning_rate: float = Field(2e-5, gt=0)
    per_device_train_batch_size: int = Field(8, ge=1)
    per_device_eval_batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    num_train_epochs: float = Field(1.0, gt=0)
    max_steps: int = -1  # > 0 overrides num_train_epochs
    warmup_ratio: float = Field(0.0, ge=0, le=1)
    warmup_steps: int = Field(0, ge=0)  # > 0 overrides warmup_ratio
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    weight_decay: float = Field(0.0, ge=0)
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_epsilon: float = Field(1e-8, gt=0)
    max_grad_norm: float = Field(1.0, ge=0)  # 0 disables clipping
    bf16: bool = False
    fp16: bool = False  # GPUs without bf16 (V100, T4): DeepSpeed's dynamic loss scaling; skipped steps are retried
    gradient_checkpointing: bool = False
    logging_steps: int = Field(10, ge=1)
    eval_steps: int | None = Field(None, ge=1)  # default: save_steps
    save_steps: int = Field(500, ge=1)
    save_total_limit: int | None = Field(2, ge=1)  # resumable DeepSpeed states kept; HF exports are all kept
    seed: int = 42
    deepspeed: str = "configs/deepspeed/zero3-bf16.json"  # path to the DeepSpeed JSON ("auto" filled from here)
    report_to: list[Literal["jsonl", "tensorboard", "wandb"]] = Field(default_factory=lambda: ["jsonl", "tensorboard"])
    run_name: str | None = None  # the W&B run's name (default: the output_dir's folder name)
    disable_tqdm: bool = False
    resume_from_checkpoint: str | None = Field(None, validation_alias=AliasChoices("resume", "resume_from_checkpoint"))
    # Load a resume state this run did not write and verify (DeepSpeed unpickles it: it can run code).
    trust_resume_state: bool = False
    # The best checkpoint (the paper keeps the lowest validation loss): recorded in best.json and each manifest.
    metric_for_best_model: Literal["eval_ce", "eval_ppl", "loss", "ce", "ppl"] = "eval_ce"
    greater_is_better: bool = False  # every metric above is a loss: lower is better
    # --- emotune ---
    fused_loss: bool = True  # hidden states + LM head, never the [N, V] logits (emotune.train.fused_head)
    export_dtype: Literal["float32", "bfloat16", "float16", "auto"] = "auto"  # auto: the model's dtype

    @field_validator("report_to", mode="before")
    @classmethod
    def _listify(cls, v):
        if v in (None, "none"):
            return []
        return [v] if isinstance(v, str) else v

    @field_validator("report_to")
    @classmethod
    def _wandb_installed(cls, v):  # checked when the config is read: before any process starts training
        if "wandb" in v:
            try:
                import wandb  # noqa: F401
            except ImportError:
                raise ValueError("includes wandb but the wandb package is not installed (pip install 'emotune[wandb]')") from None
        return v

    @model_validator(mode="after")
    def _one_precision(self):
        if self.bf16 and self.fp16:
            raise ValueError("bf16 and fp16 are both true: choose one mixed-precision mode")
        return self

    @model_validator(mode="after")
    def _teacher_and_target(self):
        target = resolve(self.objective.name, self.objective.params)[1].get("target", "onehot")
        if target == "teacher" and self.teacher is None:
            raise ValueError(f"teacher: objective {self.objective.name!r} with target 'teacher' needs a teacher "
                             "section (teacher.model: a checkpoint directory or hub id)")
        if self.teacher is not None and target != "teacher":
            raise ValueError(f"teacher: given, but objective {self.objective.name!r} has target {target!r} "
                             "(set objective.params.target: teacher, or remove the teacher section)")
        for key in ("temperature", "top_k"):
            if self.teacher is not None and key in self.objective.params:
                raise ValueError(f"objective.params.{key}: the teacher's {key} is set as teacher.{key}")
        return self

    def objective_params(self) -> dict[str, Any]:
        """The objective's parameters, with the teacher's temperature and top_k for a teacher target."""
        if self.teacher is None:
            return dict(self.objective.params)
        return {**self.objective.params, "temperature": self.teacher.temperature, "top_k": self.teacher.top_k}

    @property
    def dtype_name(self) -> str:
        if self.model.torch_dtype != "auto":
            return self.model.torch_dtype
        return "bfloat16" if self.bf16 else "float16" if self.fp16 else "float32"

    def config_hash(self) -> str:
        """Hash of what determines the trained weights (not where logs go, not resume)."""
        data = self.model_dump(mode="json", exclude={"resume_from_checkpoint", "disable_tqdm", "report_to", "run_name",
                                                     "trust_resume_state", "metric_for_best_model", "greater_is_better"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# loading: YAML file + key=value overrides

def keys_help() -> str:
    """What a run config (and its key=value overrides) accepts, for `emotune train --help`: every key,
    sections with theirs, the objectives and the shipped configs."""
    from emotune.objectives.registry import ALIASES, OBJECTIVES

    keys = []
    for name, field in TrainConfig.model_fields.items():
        sub = field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) else None
        keys.append(f"{name}.{{{', '.join(sub.model_fields)}}}" if sub else name)
    return ("config keys (YAML, or key=value overrides, dotted for sections): " + "; ".join(keys) + "\n\n"
            f"objective.name: {', '.join([*OBJECTIVES, *ALIASES])} (parameters: emotune losses)\n\n"
            f"shipped configs (a name or configs/train/NAME.yaml; a file of yours by its path): "
            f"{', '.join(shipped_names('train'))}")


def validate(data: dict, source: str = "config") -> TrainConfig:
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        raise EmotuneError(config_line(err, source, unknown="unknown key (check its spelling and section)",
                                       missing="required key is missing", more=True)) from None
    except EmotuneError as err:  # raised by objective resolution inside a validator
        raise EmotuneError(f"{source}: objective: {err}") from None


def read_yaml(path: str | Path, kind: str = "train") -> dict:
    """A YAML mapping from the user's file, or a shipped config of that name (emotune.resources)."""
    given = path
    path = resolve_file(path, kind)
    if not path.is_file():
        path = Path(given)
        raise EmotuneError(f"config file {path} not found (shipped {kind} configs: {', '.join(shipped_names(kind))})")
    data = read_user_yaml(path, "run config")
    if not isinstance(data, dict):
        raise EmotuneError(f"{path}: a run config must be a mapping of keys to values")
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    data = apply_overrides(read_yaml(path), overrides or [])
    source = str(path) + (" (with command-line overrides)" if overrides else "")
    return validate(data, source)
