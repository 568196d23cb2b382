"""The distillation teacher's loading checks and the config keys of a teacher target (no process group)."""

from types import SimpleNamespace

import pytest
import torch
from train_builders import corpus_lines, make_tiny_llama, make_wordpiece_tokenizer

from emotune.errors import EmotuneError
from emotune.train.config import TeacherConfig, validate
from emotune.train.teacher import check_teacher, load_teacher, teacher_ds_config, teacher_hidden


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


# --- the teacher's tokenizer is the student's (issue 24): equal output rows are not enough

SIZE = 300


def _bpe(path, texts, add_prefix_space=False):
    from tokenizers import pre_tokenizers

    from emotune.train.model import train_tokenizer

    tok = train_tokenizer(texts, SIZE)
    if add_prefix_space:  # same vocabulary and merges, another split of the same text
        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    assert len(tok) == SIZE
    tok.save_pretrained(str(path))
    return tok


def _checkpoint(path, tok):
    make_tiny_llama(path, tok, hidden=16, layers=1)
    return path


def _cfg(tmp_path, student, teacher):
    return validate({"output_dir": str(tmp_path / "out"), "model": {"name_or_path": str(student)},
                     "data": {"train_files": ["x.txt"]}, "objective": {"name": "emo", "params": {"target": "teacher"}},
                     "teacher": {"model": str(teacher)}})


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    d = tmp_path_factory.mktemp("student")
    tok = _bpe(d / "tok", corpus_lines(200))
    return _checkpoint(d / "model", tok), tok


def _teachers():
    def special(path):  # the same tokenizer whose EOS is another of its tokens
        from emotune.train.model import train_tokenizer

        tok = train_tokenizer(corpus_lines(200), SIZE)
        tok.eos_token = "<pad>"
        tok.save_pretrained(str(path))
        return tok
    return {
        "another-family": (lambda p: make_wordpiece_tokenizer(p, SIZE), "token '<unk>' is only in the teacher's vocabulary"),
        "same-family-other-text": (lambda p: _bpe(p, corpus_lines(200, seed=9) + ["zebra quartz vexing jumbo"] * 50),
                                   "is id"),
        "other-eos": (special, "eos_token '<pad>', the student's '</s>'"),
        "same-vocab-other-split": (lambda p: _bpe(p, corpus_lines(200), add_prefix_space=True), "for the teacher"),
    }


@pytest.mark.parametrize("kind", list(_teachers()))
def test_a_teacher_with_another_tokenizer_of_equal_size_is_refused(tmp_path, student, kind):
    """Each teacher has the student's number of output rows (what alone was checked before), so it trained to exit 0."""
    student_dir, student_tok = student
    build, why = _teachers()[kind]
    teacher = _checkpoint(tmp_path / "teacher", build(tmp_path / "teacher-tok"))
    cfg = _cfg(tmp_path, student_dir, teacher)
    with pytest.raises(EmotuneError, match=r"^teacher.model: the teacher's tokenizer is not the student's \(") as err:
        check_teacher(cfg)  # the preflight: before anything is written
    assert why in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(EmotuneError, match="teacher.model: the teacher's tokenizer is not the student's"):
        load_teacher(cfg, {}, SIZE, student_tok)  # a tokenizer trained on the data is checked here


def test_the_students_own_tokenizer_passes(tmp_path, student):
    student_dir, student_tok = student
    teacher = _checkpoint(tmp_path / "teacher", student_tok)
    check_teacher(_cfg(tmp_path, student_dir, teacher))
    student_tok.pad_token = student_tok.eos_token  # what a run's pad_token: eos does to its own copy: still the same
    from emotune.train.teacher import check_same_tokenizer, teacher_tokenizer

    check_same_tokenizer(teacher_tokenizer(_cfg(tmp_path, student_dir, teacher)), student_tok)


def test_a_teacher_without_a_tokenizer_is_refused(tmp_path, student):
    student_dir, student_tok = student
    teacher = _checkpoint(tmp_path / "teacher", student_tok)
    for f in list(teacher.glob("tokenizer*")) + list(teacher.glob("special_tokens_map.json")):
        f.unlink()
    with pytest.raises(EmotuneError, match="teacher.model: .* holds no tokenizer files .*the teacher's tokenizer is the student's"):
        check_teacher(_cfg(tmp_path, student_dir, teacher))


@pytest.mark.parametrize("kind", list(_teachers()))
def test_an_external_cost_source_with_another_tokenizer_is_refused(tmp_path, student, kind):
    """`objective.cost: external` checked only the number of rows: a head of another tokenizer with as many rows
    gave every token another token's embedding. The cost source shares the teacher's check."""
    from emotune.train.cost import check_cost_tokenizer, external_cost

    student_dir, student_tok = student
    build, why = _teachers()[kind]
    source = str(_checkpoint(tmp_path / "cost", build(tmp_path / "cost-tok")))
    pattern = r"^objective.cost_source \(.*cost\): the cost source's tokenizer is not the student's \("
    with pytest.raises(EmotuneError, match=pattern) as err:
        check_cost_tokenizer(source, student_tok)  # the preflight's check
    assert why.replace("teacher", "cost source") in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(EmotuneError, match=pattern):
        external_cost(source, SIZE, student_tok)  # when the model is built (a tokenizer trained on the data)


def test_an_external_cost_source_with_the_students_tokenizer_passes(tmp_path, student):
    from emotune.train.cost import check_cost_tokenizer, external_cost

    student_dir, student_tok = student
    check_cost_tokenizer(str(student_dir), student_tok)
    assert external_cost(str(student_dir), SIZE, student_tok).matrix().shape[0] == SIZE
    source = _checkpoint(tmp_path / "cost", student_tok)
    for f in list(source.glob("tokenizer*")) + list(source.glob("special_tokens_map.json")):
        f.unlink()
    with pytest.raises(EmotuneError, match="objective.cost_source: .* holds no tokenizer files .*the student's"):
        check_cost_tokenizer(str(source), student_tok)


def test_a_pad_token_the_run_added_is_not_a_difference(tmp_path):
    """`model.pad_token: add` appends `<pad>` to the student's copy after the preflight compared it; the checkpoint's
    tokenizer lacks it. Padded positions are never targets: still the same tokenizer (not so a token added in front)."""
    import copy

    from emotune.train.model import train_tokenizer
    from emotune.train.same_tokenizer import tokenizer_difference

    tok = train_tokenizer(corpus_lines(200), SIZE, pad=False)
    student = copy.deepcopy(tok)
    student.add_special_tokens({"pad_token": "<pad>"})
    assert tokenizer_difference(tok, student) is None
    other = copy.deepcopy(tok)
    other.add_special_tokens({"additional_special_tokens": ["<extra>"]})
    assert tokenizer_difference(other, student) == "301 tokens, the student's 300"  # ours without its pad
