"""The distillation teacher's loading checks and the config keys of a teacher target (no process group)."""

from types import SimpleNamespace

import pytest
import torch

from emotune.errors import EmotuneError
from emotune.train.config import TeacherConfig, validate
from emotune.train.teacher import load_teacher, teacher_ds_config, teacher_hidden

torch.set_num_threads(1)


def _tiny(path, vocab, hidden=16):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(path)
    return model.eval()


def test_vocabulary_mismatch_is_one_line_naming_the_key(tmp_path):
    _tiny(tmp_path / "t", vocab=50)
    cfg = SimpleNamespace(teacher=TeacherConfig(model=str(tmp_path / "t")), dtype_name="float32")
    with pytest.raises(EmotuneError, match=r"teacher.model: the teacher's vocabulary \(50 output rows\) is not the student's \(48\)"):
        load_teacher(cfg, {}, 48)


def test_teacher_hidden_states_give_its_logits_through_its_head(tmp_path):
    model = _tiny(tmp_path / "t", vocab=40)
    ids = torch.randint(0, 40, (2, 7))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    hidden = teacher_hidden(model, inputs)
    assert hidden.shape == (2, 7, 16) and not hidden.requires_grad
    assert torch.allclose(hidden @ model.lm_head.weight.T, model(**inputs).logits, atol=1e-6)
    assert "forward" not in model.lm_head.__dict__  # the head is restored


def test_teacher_engine_has_no_optimizer():
    ds = {"optimizer": {"type": "AdamW"}, "scheduler": {"type": "WarmupLR"}, "zero_optimization": {"stage": 3},
          "train_micro_batch_size_per_gpu": 2}
    assert teacher_ds_config(ds) == {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 2}
    assert "optimizer" in ds  # the student's config is untouched


def test_config_passes_the_teacher_options_to_the_objective(tmp_path):
    base = {"output_dir": str(tmp_path / "o"), "model": {"name_or_path": str(tmp_path)}, "data": {"train_files": ["x.txt"]}}
    cfg = validate({**base, "objective": {"name": "emo", "params": {"target": "teacher"}},
                    "teacher": {"teacher_model_name_or_path": "some/teacher", "temperature": 2.0, "top_k": 20}})
    assert cfg.teacher.model == "some/teacher"
    assert cfg.objective_params() == {"target": "teacher", "temperature": 2.0, "top_k": 20}
    cfg = validate({**base, "objective": {"name": "kd"}, "teacher": {"model": "t"}})  # kd's target is the teacher's
    assert cfg.objective_params()["temperature"] == 1.0
    with pytest.raises(EmotuneError, match="teacher.top_k"):
        validate({**base, "objective": {"name": "kd"}, "teacher": {"model": "t", "top_k": 0}})


def test_loss_step_with_a_teacher_fused_equals_plain(tmp_path):
    from emotune.objectives import CostEmbedding, build_objective
    from emotune.train.loss_step import loss_step

    teacher = _tiny(tmp_path / "t", vocab=40, hidden=24)
    student = _tiny(tmp_path / "s", vocab=40, hidden=16).train()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 40, (2, 9), generator=g)
    labels = ids.clone()
    labels[0, :3] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    for name, params in [("emo", {"target": "teacher", "top_k": 5}), ("kd_reverse", {"temperature": 2.0})]:
        objective = build_objective(name, params, CostEmbedding.frozen(student))
        with torch.no_grad():
            want = objective(student(ids).logits, labels, teacher_logits=teacher(ids).logits).loss
        results = []
        for fused in (True, False):
            student.zero_grad(set_to_none=True)
            out = loss_step(student, batch, objective, fused, teacher)
            out.loss.backward()
            results.append((float(out.loss), student.lm_head.weight.grad.clone()))
        assert results[0][0] == pytest.approx(float(want), rel=1e-6) and results[1][0] == pytest.approx(float(want), rel=1e-6)
        assert torch.allclose(results[0][1], results[1][1], atol=1e-7) and float(results[0][1].abs().max()) > 0
        assert all(p.grad is None for p in teacher.parameters())
    with pytest.raises(ValueError, match="needs the teacher model"):
        loss_step(student, batch, objective, True)
