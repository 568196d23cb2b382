"""Registry, the HF Trainer / model adapters, the external cost head, and import hygiene."""

import json
import subprocess
import sys

import pytest
import tiny_models
import torch
from safetensors.torch import save_file

from emotune.errors import EmotuneError
from emotune.objectives import CostEmbedding, attach, build_objective, describe, mle, trainer_loss
from emotune.objectives.registry import resolve


def tiny_llama(vocab=40, tie=False, seed=0):
    return tiny_models.tiny_llama(vocab, seed=seed, hidden=16, layers=1, heads=2, max_positions=32, tie=tie, pad=0)


def test_registry_resolves_defaults_aliases_and_rejects_bad_params():
    assert resolve("emo") == ("emo", {"variant": "emo1", "ratio_clamp": None, "weighting": "token", "gt_detach": False})
    assert resolve("emo2")[1]["variant"] == "emo2"
    assert resolve("tailr", {"gamma": 1e-7})[1] == {"gamma": 1e-7, "min_weight": 0.2}
    with pytest.raises(EmotuneError, match="unknown objective 'emd'"):
        resolve("emd")
    with pytest.raises(EmotuneError, match="no parameter 'gama'"):
        resolve("tailr", {"gama": 0.1})
    with pytest.raises(EmotuneError, match="eta=1.5 is invalid"):
        resolve("mixce", {"eta": 1.5})
    with pytest.raises(EmotuneError, match="variant='emo3'"):
        resolve("emo", {"variant": "emo3"})
    with pytest.raises(EmotuneError, match="alias fixes variant"):
        resolve("emo2", {"variant": "emo1"})
    with pytest.raises(EmotuneError, match="needs a cost embedding"):
        build_objective("emo")
    assert "tailr" in describe() and "ratio_clamp" in describe()


@pytest.mark.parametrize("tie", [False, True])
def test_case10_attach_keeps_logits_and_generate_and_computes_emo(tie):
    model = tiny_llama(tie=tie)
    ids = torch.randint(3, 40, (2, 7))
    plain = model(ids).logits
    attach(model, "emo")
    out = model(ids)  # labels=None: ordinary logits, no loss
    assert out.loss is None and out.logits.shape == (2, 7, 40)
    assert torch.equal(out.logits, plain)
    gen = model.generate(ids[:, :3], max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert gen.shape == (2, 7)
    labels = ids.clone(); labels[:, :2] = -100
    with_labels = model(ids, labels=labels)
    want = build_objective("emo", {}, cost=CostEmbedding.frozen(tiny_llama(tie=tie)))(plain, labels)
    assert with_labels.loss.item() == pytest.approx(want.loss.item(), abs=1e-6)
    with_labels.loss.backward()
    assert model.lm_head.weight.grad is not None
    assert set(model.loss_function.last_metrics) >= {"loss", "ce", "demd", "weight"}


def test_trainer_compute_loss_func_one_line(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = tiny_llama()
    ids = torch.randint(3, 40, (8, 6))
    data = [{"input_ids": r, "labels": r} for r in ids]
    loss_fn = trainer_loss(model, "emo", variant="emo2")
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, report_to=[],
                             use_cpu=True, logging_steps=1, save_strategy="no", learning_rate=1e-3)
    trainer = Trainer(model=model, args=args, train_dataset=data, compute_loss_func=loss_fn)
    trainer.train()
    assert loss_fn.last_metrics["n_tokens"] > 0 and loss_fn.last_metrics["demd"] > 0
    # The adapter's value equals the objective on the model's logits (Trainer passes outputs + labels).
    model.eval()
    outputs = model(ids[:2])
    expect = build_objective("emo2", {}, cost=loss_fn.objective.cost)(outputs.logits, ids[:2]).loss
    assert loss_fn(outputs, ids[:2]).item() == pytest.approx(expect.item(), abs=1e-6)


def test_external_cost_from_checkpoint_files(tmp_path):
    from emotune.train.cost import external_cost, load_lm_head

    big = tiny_llama(vocab=40)
    big.save_pretrained(tmp_path / "big")
    head = load_lm_head(str(tmp_path / "big"))
    assert torch.equal(head, big.lm_head.weight.detach())
    # A tied checkpoint: only the input embedding is stored.
    tied = tiny_llama(vocab=40, tie=True)
    tied.save_pretrained(tmp_path / "tied")
    assert torch.equal(load_lm_head(str(tmp_path / "tied")), tied.model.embed_tokens.weight.detach())
    # Hidden size may differ; vocabulary must match.
    cost = external_cost(str(tmp_path / "big"), vocab_size=40)
    model = tiny_llama(vocab=40)
    logits = model(torch.randint(3, 40, (1, 5))).logits
    build_objective("emo", {}, cost=cost)(logits, torch.randint(3, 40, (1, 5)))
    with pytest.raises(EmotuneError, match="40 rows but the model's vocabulary has 41"):
        external_cost(str(tmp_path / "big"), vocab_size=41)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmotuneError, match="no model.safetensors"):
        load_lm_head(str(tmp_path / "empty"))
    # A sharded checkpoint: the index names the shard that holds the head.
    shard = tmp_path / "sharded"
    shard.mkdir()
    save_file({"lm_head.weight": torch.ones(40, 8)}, str(shard / "model-00002-of-00002.safetensors"))
    (shard / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}))
    (shard / "config.json").write_text(json.dumps({"tie_word_embeddings": False}))
    assert load_lm_head(str(shard)).shape == (40, 8)


def test_import_objectives_pulls_no_pipeline_deepspeed_or_datasets():
    code = (
        "import sys, emotune.objectives; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('deepspeed', 'datasets', 'transformers', 'peft', 'accelerate')"
        " or m.startswith(('emotune.train', 'emotune.eval', 'emotune.launch'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_mle_matches_model_builtin_loss():
    model = tiny_llama()
    ids = torch.randint(3, 40, (2, 6))
    out = model(ids, labels=ids)
    assert mle(out.logits, ids).loss.item() == pytest.approx(out.loss.item(), abs=1e-6)
