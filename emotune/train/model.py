"""Tokenizer, model and cost embedding for the training stage.

Order matters (docs/objectives.md, *Cost embedding*): load the model -> give the tokenizer a pad token (resizing the
embeddings if one is added) -> copy the cost embedding (so it includes any new rows) -> LoRA ->
DeepSpeed. Under ZeRO-3 the model is built inside `zero.Init` (transformers does it when an
`HfDeepSpeedConfig` is alive), so every parameter is a `[0]` placeholder outside forward: the cost
copy gathers the full `[V, H]` head on every rank. On resume the cost is rebuilt the same way from
the *base* weights before the DeepSpeed state is loaded, so it never drifts with training.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
from torch import nn

from emotune.atomic import publish_dir
from emotune.errors import EmotuneError, one_line
from emotune.hub import resolve
from emotune.objectives.cost import CostEmbedding

log = logging.getLogger("emotune.model")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ----------------------------------------------------------------------------------------------
# tokenizer

def train_tokenizer(texts: list[str], vocab_size: int, pad: bool = True):
    """A byte-level BPE tokenizer trained on `texts`, with <pad> <s> </s> and BOS prepended (tiny runs, tests).
    `pad=False` gives a LLaMA-like tokenizer without a pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"] if pad else ["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(texts, trainer)
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                      special_tokens=[("<s>", tk.token_to_id("<s>"))])
    specials = {"pad_token": "<pad>"} if pad else {"unk_token": "<unk>"}
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", **specials)


def load_tokenizer(cfg, rank: int = 0, barrier=lambda: None, texts_for_training=None):
    """The run's tokenizer: pretrained (local/hub) or, with model.train_tokenizer_vocab_size, trained on the
    training data by rank 0 and saved in <output_dir>/tokenizer for the other ranks and for resume."""
    from transformers import AutoTokenizer

    m = cfg.model
    if m.train_tokenizer_vocab_size:
        path = Path(cfg.output_dir) / "tokenizer"  # kept with the run, so a resumed run tokenises identically
        if rank == 0 and not (path / "tokenizer_config.json").is_file():
            try:
                tok = train_tokenizer(texts_for_training(), m.train_tokenizer_vocab_size)
                tmp = path.with_name(".tokenizer.tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                tok.save_pretrained(str(tmp))
                publish_dir(tmp, path)  # replaces an incomplete earlier attempt
            finally:
                barrier()
        else:
            barrier()
        return AutoTokenizer.from_pretrained(str(path))
    source, key = tokenizer_source(cfg)
    extra = resolve(source, key, m.revision, need_tokenizer=True, filename="tokenizer_config.json")
    try:
        return AutoTokenizer.from_pretrained(source, revision=m.revision, trust_remote_code=m.trust_remote_code, **extra)
    except Exception as err:
        raise EmotuneError(f"{key}: cannot load a tokenizer from {source!r}: {one_line(err)}") from None


def tokenizer_source(cfg) -> tuple[str, str]:
    """(where the tokenizer comes from, the config key naming it)."""
    m = cfg.model
    if m.tokenizer_name_or_path:
        return m.tokenizer_name_or_path, "model.tokenizer_name_or_path"
    if m.name_or_path is None:
        raise EmotuneError("model.config builds a fresh model: set model.tokenizer_name_or_path or model.train_tokenizer_vocab_size")
    return m.name_or_path, "model.name_or_path"


def ensure_pad_token(tokenizer, how: str) -> bool:
    """Give the tokenizer a pad token; returns True when a new token was added (embeddings must grow)."""
    if tokenizer.pad_token_id is not None:
        return False
    if how == "add":
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
        return True
    fallback = tokenizer.eos_token if how == "eos" else tokenizer.unk_token
    if fallback is None:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
        return True
    tokenizer.pad_token = fallback
    return False


# ----------------------------------------------------------------------------------------------
# model

def load_model(cfg, tokenizer):
    """The causal LM in the run's dtype, pad token handled and embeddings resized to the tokenizer.

    Call it while an `HfDeepSpeedConfig` for ZeRO-3 is alive to get a partitioned (zero.Init) model.
    """
    from transformers import AutoModelForCausalLM

    m = cfg.model
    dtype = DTYPES[cfg.dtype_name]
    kwargs = {"dtype": dtype, "trust_remote_code": m.trust_remote_code}
    if m.attn_implementation:
        kwargs["attn_implementation"] = m.attn_implementation
    if m.name_or_path is not None:
        kwargs.update(resolve(m.name_or_path, "model.name_or_path", m.revision, need_weights=True))
        try:
            model = AutoModelForCausalLM.from_pretrained(m.name_or_path, revision=m.revision, **kwargs)
        except EmotuneError:
            raise
        except (OSError, ValueError) as err:
            raise EmotuneError(f"model.name_or_path: cannot load a causal LM from {m.name_or_path!r}: {one_line(err)}") from None
    else:
        config = fresh_config(cfg, tokenizer)
        torch.manual_seed(cfg.seed)  # the fresh model is the same on every rank and every run
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=m.trust_remote_code)
        except (ValueError, TypeError, RuntimeError) as err:
            raise EmotuneError(f"model.config: cannot build a {config.model_type} model: {one_line(err)}") from None
    added = ensure_pad_token(tokenizer, m.pad_token)
    resize_embeddings(model, tokenizer, m.pad_to_multiple_of, mean_init=added)
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.use_cache = False
    return model


def fresh_config(cfg, tokenizer=None):
    """The transformers config of `model.config` (tokenizer: fills vocab size and special ids), validated:
    sizes that do not fit (hidden size vs heads, ...) are one EmotuneError naming the key."""
    from transformers import AutoConfig

    params = dict(cfg.model.config)
    model_type = params.pop("model_type")
    if tokenizer is not None:
        params.setdefault("vocab_size", len(tokenizer))
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            params.setdefault(key, getattr(tokenizer, key))
    try:
        config = AutoConfig.for_model(model_type, **params)
    except Exception as err:  # noqa: BLE001 - ValueError, TypeError, huggingface_hub's StrictDataclassError...
        raise EmotuneError(f"model.config: {one_line(err)}") from None
    hidden = getattr(config, "hidden_size", None)
    heads = getattr(config, "num_attention_heads", None)
    kv = getattr(config, "num_key_value_heads", None)
    for name in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size"):
        value = getattr(config, name, None)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise EmotuneError(f"model.config.{name}: must be a positive integer (got {value!r})")
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0 and hidden % heads:
        raise EmotuneError(f"model.config: hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
    if isinstance(heads, int) and isinstance(kv, int) and kv > 0 and heads % kv:
        raise EmotuneError(f"model.config: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}")
    return config


def max_positions(config) -> int | None:
    """The longest sequence a transformers config allows (None: no limit recorded)."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_model_config(cfg) -> None:
    """What can be checked from the model's config alone, before anything is written: it builds, and the
    data's sequences (data.block_size / data.max_length) fit its position embeddings."""
    from transformers import AutoConfig

    m = cfg.model
    if m.config is not None:
        config = fresh_config(cfg)
    else:
        extra = resolve(m.name_or_path, "model.name_or_path", m.revision, need_weights=True)
        try:
            config = AutoConfig.from_pretrained(m.name_or_path, revision=m.revision,
                                                trust_remote_code=m.trust_remote_code, **extra)
        except EmotuneError:
            raise
        except Exception as err:  # noqa: BLE001 - OSError, ValueError, JSON errors: one line
            raise EmotuneError(f"model.name_or_path: cannot load a model config from {m.name_or_path!r}: "
                               f"{one_line(err)}") from None
    if not m.train_tokenizer_vocab_size:
        source, key = tokenizer_source(cfg)
        resolve(source, key, m.revision, need_tokenizer=True, filename="tokenizer_config.json")
    limit = max_positions(config)
    key = "data.block_size" if cfg.data.format == "text" else "data.max_length"
    length = cfg.data.block_size if cfg.data.format == "text" else cfg.data.max_length
    if limit is not None and length > limit:
        raise EmotuneError(f"{key}={length} is longer than the model's {limit} position embeddings "
                           f"(max_position_embeddings); lower {key}")


def resize_embeddings(model, tokenizer, pad_to_multiple_of: int | None = None, mean_init: bool = True) -> None:
    """Grow the embeddings when the tokenizer has more tokens than the model (never shrink)."""
    current = model.get_input_embeddings().num_embeddings if hasattr(model.get_input_embeddings(), "num_embeddings") else None
    if current is None or len(tokenizer) <= current:
        return
    log.info("resizing embeddings %d -> %d tokens", current, len(tokenizer))
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=pad_to_multiple_of, mean_resizing=mean_init)


def apply_lora(model, lora_cfg, gradient_checkpointing: bool):
    from peft import LoraConfig, get_peft_model

    if gradient_checkpointing:
        model.enable_input_require_grads()
    peft_cfg = LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                          target_modules=lora_cfg.target_modules, task_type="CAUSAL_LM", bias="none")
    try:
        return get_peft_model(model, peft_cfg)
    except ValueError as err:
        raise EmotuneError(f"lora.target_modules: {err}") from None


def unwrap(model):
    """The transformers model under a peft wrapper (the one whose config and save_pretrained we use)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def student_tokenizer_exists(cfg) -> bool:
    """False where the student's tokenizer is trained on the data and not there yet (load_tokenizer would train
    and write it): the checks that compare it with another checkpoint's then run when the model is built."""
    trained = Path(cfg.output_dir) / "tokenizer" / "tokenizer_config.json"
    return not cfg.model.train_tokenizer_vocab_size or trained.is_file()


# ----------------------------------------------------------------------------------------------
# cost embedding

def build_cost(cfg, model, vocab_size: int, tokenizer=None) -> CostEmbedding | None:
    """The cost embedding the objective needs, or None. `frozen`: the full `[V, H]` output embedding of
    the (resized) base model, gathered under ZeRO-3; `external`: another checkpoint's head from its files
    (its tokenizer checked against the student's `tokenizer` where given)."""
    from emotune.objectives.registry import needs_cost

    if not needs_cost(cfg.objective.name, cfg.objective.params):
        return None
    source = cfg.objective.cost
    if source == "external":
        from emotune.train.cost import external_cost

        return external_cost(cfg.objective.cost_source, vocab_size, tokenizer)
    if source == "adaptive":
        return CostEmbedding.adaptive(unwrap(model))
    cost = CostEmbedding.frozen(unwrap(model))
    if cost.vocab_size != vocab_size:
        raise EmotuneError(f"cost embedding has {cost.vocab_size} rows, the model's output has {vocab_size}")
    return cost


def output_vocab_size(model) -> int:
    head = unwrap(model).get_output_embeddings()
    weight = head.weight if head is not None else unwrap(model).get_input_embeddings().weight
    return int(getattr(weight, "ds_shape", weight.shape)[0])


def hf_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside DeepSpeed / DDP / torch.compile / PEFT wrappers."""
    m = model
    for _ in range(8):
        if hasattr(m, "_orig_mod"):
            m = m._orig_mod
        elif not hasattr(type(m), "get_output_embeddings") and isinstance(getattr(m, "module", None), nn.Module):
            m = m.module  # DeepSpeedEngine, DistributedDataParallel
        elif hasattr(m, "get_base_model") and m.get_base_model() is not m:
            m = m.get_base_model()  # PeftModel -> the transformers model with adapters injected
        else:
            break
    return m
