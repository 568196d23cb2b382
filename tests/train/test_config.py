"""Run config: YAML + key=value overrides, validation messages, shipped configs, DeepSpeed "auto" filling."""

from pathlib import Path

import pytest
import yaml

from emotune.cli import main as cli_main
from emotune.errors import EmotuneError
from emotune.resources import shipped
from emotune.train.config import TrainConfig, apply_overrides, load_config, validate
from emotune.train.ds_config import deepspeed_config
from emotune.train.optim import lr_lambda

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(shipped("train").glob("*.yaml"))

MINIMAL = {"output_dir": "out", "model": {"name_or_path": "m"}, "data": {"train_files": ["a.txt"]}}


def write(tmp_path, data) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_shipped_configs_validate():
    names = {p.stem for p in SHIPPED}
    for needed in ("tiny-cpu", "llama7b-wikitext103-emo", "llama7b-wikitext103-mle", "llama13b-wikitext103-emo",
                   "llama13b-wikitext103-mle", "llama7b-alpaca-gpt4-emo", "llama13b-alpaca-gpt4-emo", "gpt2-wikitext103-emo",
                   "opt125m-wikitext103-emo", "llama7b-wikitext103-emo-lora", "llama13b-alpaca-gpt4-emo-lora"):
        assert needed in names, needed
    for p in SHIPPED:
        cfg = load_config(p)
        deepspeed_config(cfg, 8, 4096)  # every "auto" can be filled


def test_paper_recipes_in_shipped_configs():
    c = load_config(shipped("train/llama7b-alpaca-gpt4-emo.yaml"))
    assert c.data.format == "instruction" and c.data.max_length == 512 and c.learning_rate == 2e-5
    assert c.lr_scheduler_type == "cosine" and c.warmup_ratio == 0.03 and c.num_train_epochs == 3 and c.bf16
    assert c.per_device_train_batch_size * c.gradient_accumulation_steps * 8 == 128  # global batch 128 on 8 GPUs
    c13 = load_config(shipped("train/llama13b-alpaca-gpt4-emo.yaml"))
    assert c13.learning_rate == 1e-5
    w = load_config(shipped("train/llama7b-wikitext103-emo.yaml"))
    assert w.data.block_size == 256 and w.learning_rate == 2e-5 and w.warmup_ratio == 0.03 and w.objective.cost == "frozen"
    assert load_config(shipped("train/llama7b-wikitext103-mle.yaml")).objective.name == "mle"


@pytest.mark.parametrize("dataset, hub", [("recycled-wiz70", "umd-zhou-lab/recycled_wiz70_v1"),
                                          ("open-platypus", "garage-bAInd/Open-Platypus")])
def test_paper_recipes_for_the_other_instruction_sets(dataset, hub):
    """The paper's other instruction sets (its Appendix C): the Alpaca-GPT4 recipe, the set's own columns."""
    alpaca = {s: load_config(shipped(f"train/llama{s}-alpaca-gpt4-emo.yaml")) for s in ("7b", "13b")}
    for size, lr in (("7b", 2e-5), ("13b", 1e-5)):
        for objective in ("mle", "emo"):
            c = load_config(shipped(f"train/llama{size}-{dataset}-{objective}.yaml"))
            assert c.data.dataset_name == hub and c.data.format == "instruction" and c.data.max_length == 512
            assert c.objective.name == objective and c.learning_rate == lr and c.num_train_epochs == 3
            assert c.per_device_train_batch_size * c.gradient_accumulation_steps * 8 == 128
            same = ("lr_scheduler_type", "warmup_ratio", "weight_decay", "bf16", "seed", "deepspeed", "model")
            assert all(getattr(c, k) == getattr(alpaca[size], k) for k in same)
            assert c.output_dir == f"runs/llama{size}-{dataset}-{objective}"
            nested = dataset == "recycled-wiz70"  # one struct column `data` holding instruction / input / output
            assert c.data.instruction_column == ("data.instruction" if nested else "instruction")
            assert c.data.output_column == ("data.output" if nested else "output")


def test_overrides_nested_and_typed(tmp_path):
    p = write(tmp_path, MINIMAL)
    cfg = load_config(p, ["learning_rate=1e-4", "data.block_size=128", "objective.params.variant=emo2", "bf16=true",
                          "resume=latest", "lora.target_modules=[q_proj,v_proj]"])
    assert cfg.learning_rate == 1e-4 and cfg.data.block_size == 128 and cfg.objective.params == {"variant": "emo2"}
    assert cfg.bf16 is True and cfg.resume_from_checkpoint == "latest" and cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.dtype_name == "bfloat16"


def test_config_hash_ignores_logging_only(tmp_path):
    p = write(tmp_path, MINIMAL)
    a, b, c = load_config(p), load_config(p, ["disable_tqdm=true"]), load_config(p, ["learning_rate=1e-3"])
    assert a.config_hash() == b.config_hash() != c.config_hash()


@pytest.mark.parametrize("override, fragment", [
    (["learnin_rate=1e-4"], "learnin_rate: unknown key"),
    (["data.blok_size=3"], "data.blok_size: unknown key"),
    (["per_device_train_batch_size=many"], "per_device_train_batch_size"),
    (["lr_scheduler_type=wavy"], "lr_scheduler_type"),
    (["objective.name=emo", "objective.params.tempo=1"], "tempo"),
    (["objective.name=nope"], "unknown objective 'nope'"),
    (["objective.cost=external"], "cost_source"),
    (["learning_rate"], "not key=value"),
])
def test_bad_config_names_the_key(tmp_path, override, fragment):
    p = write(tmp_path, MINIMAL)
    with pytest.raises(EmotuneError) as err:
        load_config(p, override)
    assert fragment in str(err.value)
    assert str(p) in str(err.value) or "override" in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_required_and_both_sources(tmp_path):
    with pytest.raises(EmotuneError, match="output_dir: required key is missing"):
        validate({"model": {"name_or_path": "m"}, "data": {"train_files": ["a"]}}, "x.yaml")
    with pytest.raises(EmotuneError, match="exactly one of model.name_or_path"):
        validate(apply_overrides(MINIMAL, ["model.config={model_type: llama}"]), "x.yaml")


def test_bad_yaml_and_missing_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("output_dir: a\nmodel: [unclosed\n")
    with pytest.raises(EmotuneError, match=r"bad.yaml: line \d+"):
        load_config(p)
    with pytest.raises(EmotuneError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_cli_reports_one_line_exit_2(tmp_path, capsys):
    p = write(tmp_path, MINIMAL)
    assert cli_main(["train", str(p), "weight_decay=-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("emotune train: error:") and "weight_decay" in err and len(err.splitlines()) == 1
    # a missing data file is caught before any process group or model exists
    assert cli_main(["train", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert "data.train_files: data file a.txt not found" in err and "Traceback" not in err


def test_deepspeed_auto_filled(tmp_path):
    cfg = validate(apply_overrides(MINIMAL, ["per_device_train_batch_size=4", "gradient_accumulation_steps=8",
                                             "learning_rate=2e-5", "bf16=true", "max_grad_norm=0.5", "weight_decay=0.1",
                                             f"deepspeed={shipped('deepspeed/zero3-bf16.json')}"]))
    ds = deepspeed_config(cfg, 4, 4096)
    assert ds["train_batch_size"] == 128 and ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 8
    assert ds["bf16"]["enabled"] is True and ds["gradient_clipping"] == 0.5
    assert ds["optimizer"]["params"] == {"lr": 2e-5, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.1}
    assert ds["zero_optimization"]["stage"] == 3 and ds["zero_optimization"]["reduce_bucket_size"] == 4096 ** 2
    cpu = deepspeed_config(cfg.model_copy(update={"deepspeed": str(shipped("deepspeed/zero3-cpu-test.json")), "bf16": False}), 2, 64)
    assert cpu["optimizer"]["params"]["torch_adam"] is True and cpu["zero_optimization"]["stage3_param_persistence_threshold"] == 0
    off = deepspeed_config(cfg.model_copy(update={"deepspeed": str(shipped("deepspeed/zero3-offload.json"))}), 2, 64)
    assert off["zero_optimization"]["offload_optimizer"]["device"] == "cpu"


def test_deepspeed_json_conflict_and_missing(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text('{"train_micro_batch_size_per_gpu": 3, "zero_optimization": {"stage": 3}}')
    cfg = validate(apply_overrides(MINIMAL, [f"deepspeed={ds}"]))
    with pytest.raises(EmotuneError, match="train_micro_batch_size_per_gpu=3 disagrees"):
        deepspeed_config(cfg, 1, 8)
    with pytest.raises(EmotuneError, match="not found"):
        deepspeed_config(cfg.model_copy(update={"deepspeed": str(tmp_path / "none.json")}), 1, 8)


def test_lr_schedule_shapes():
    lin = lr_lambda(10, 2, "linear")
    assert [round(lin(s), 4) for s in range(4)] == [0.5, 1.0, 1.0, 0.875]
    assert lin(10) == 0.0
    cos = lr_lambda(10, 0, "cosine")
    assert cos(0) == 1.0 and abs(cos(5) - 0.5) < 1e-12 and abs(cos(10)) < 1e-12
    assert lr_lambda(10, 3, "constant")(0) == 1.0 and lr_lambda(10, 3, "constant_with_warmup")(0) == pytest.approx(1 / 3)


def test_fields_follow_hf_training_arguments():
    from transformers import TrainingArguments

    hf = set(TrainingArguments.__dataclass_fields__)
    # warmup_ratio: the (and transformers 4.x's) name; transformers 5 folded it into warmup_steps.
    ours = set(TrainConfig.model_fields) - {"model", "data", "objective", "lora", "teacher", "fused_loss", "export_dtype", "warmup_ratio",
                                            "trust_resume_state"}
    assert ours <= hf, sorted(ours - hf)
