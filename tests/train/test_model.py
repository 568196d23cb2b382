"""Model loading and the cost embedding: full [V, H] under ZeRO-3 (never [0]), equal to the base head after resize."""

import pytest
import torch
from safetensors import safe_open
from train_builders import make_tiny_llama, make_tokenizer, single_rank

from emotune.errors import EmotuneError
from emotune.resources import shipped
from emotune.train.config import validate
from emotune.train.model import build_cost, ensure_pad_token, load_model, output_vocab_size


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("model")
    tok = make_tokenizer(root / "tok")
    make_tiny_llama(root / "llama", tok)
    make_tiny_llama(root / "tied", tok, tie=True)
    make_tiny_llama(root / "othervocab", tok, vocab=len(tok) + 7)
    nopad = make_tokenizer(root / "nopad-tok", pad=False)
    make_tiny_llama(root / "nopad", nopad)
    return root, tok


def unit(w):  # docs/objectives.md, *DEMD*: e / max(|e|, 1e-6), so the zero pad row stays zero
    return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-6)


def head_from_file(path):
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        key = "lm_head.weight" if "lm_head.weight" in f.keys() else "model.embed_tokens.weight"
        return f.get_tensor(key)


def cfg_for(model_dir, **extra):
    return validate({"output_dir": "unused", "model": {"name_or_path": str(model_dir), "torch_dtype": "float32", **extra.pop("model", {})},
                     "data": {"train_files": ["x.txt"]}, **extra})


def zero3_config():
    from emotune.train.ds_config import deepspeed_config

    cfg = validate({"output_dir": "o", "model": {"name_or_path": "m"}, "data": {"train_files": ["x"]},
                    "deepspeed": str(shipped("deepspeed/zero3-cpu-test.json"))})
    return deepspeed_config(cfg, 1, 32)


def test_cost_is_full_head_under_zero3_after_resize(saved):
    from transformers import AutoTokenizer
    from transformers.integrations import HfDeepSpeedConfig

    root, tok = saved
    with single_rank():
        import deepspeed

        keep = HfDeepSpeedConfig(zero3_config())  # noqa: F841  transformers builds the model under zero.Init
        # 1. no resize: the head is a partitioned placeholder, the cost is the full file head, exactly
        cfg = cfg_for(root / "llama")
        model = load_model(cfg, tok)
        head = model.get_output_embeddings().weight
        assert hasattr(head, "ds_id") and head.shape == torch.Size([0])  # really partitioned
        base = head_from_file(root / "llama")
        cost = build_cost(cfg, model, output_vocab_size(model))
        assert cost.matrix().shape == base.shape and torch.equal(cost.matrix(), unit(base))  # [V, H], never [0]

        # 2. LLaMA-style tokenizer without pad: `pad_token: add` grows the vocabulary before the copy
        tok2 = AutoTokenizer.from_pretrained(str(root / "nopad"))
        assert tok2.pad_token_id is None
        cfg = cfg_for(root / "nopad", model={"pad_token": "add"})
        base = head_from_file(root / "nopad")
        model = load_model(cfg, tok2)
        assert model.model.layers[0].self_attn.q_proj.weight.shape == torch.Size([0])
        V = output_vocab_size(model)
        assert V == base.shape[0] + 1 == len(tok2) and tok2.pad_token_id == V - 1
        matrix = build_cost(cfg, model, V).matrix()
        assert matrix.shape == (V, base.shape[1])
        assert torch.equal(matrix[:-1], unit(base))  # the base head, exactly (fp32 file == gathered fp32)
        head = model.get_output_embeddings().weight
        with deepspeed.zero.GatheredParameters([head] if hasattr(head, "ds_id") else []):
            live = head.detach().clone()
        assert torch.equal(matrix[-1], unit(live)[-1])  # the new pad row is included
        assert torch.allclose(live[-1], base.mean(0), atol=1e-3)  # mean-initialised new row
        del keep


def test_tied_model_cost_is_input_embedding_and_fresh_config(saved, tmp_path):
    root, tok = saved
    cfg = cfg_for(root / "tied")
    model = load_model(cfg, tok)
    cost = build_cost(cfg, model, output_vocab_size(model))
    emb = model.get_input_embeddings().weight.detach()
    assert torch.equal(cost.matrix(), unit(emb))
    fresh = validate({"output_dir": str(tmp_path), "data": {"train_files": ["x"]},
                      "model": {"config": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                           "num_attention_heads": 4, "num_key_value_heads": 2}}})
    m1, m2 = load_model(fresh, tok), load_model(fresh, tok)
    assert m1.config.vocab_size == len(tok) and torch.equal(m1.lm_head.weight, m2.lm_head.weight)  # seeded
    assert m1.dtype == torch.float32


def test_objectives_without_cost_and_adaptive(saved):
    root, tok = saved
    model = load_model(cfg_for(root / "llama"), tok)
    assert build_cost(cfg_for(root / "llama", objective={"name": "mle"}), model, len(tok)) is None
    adaptive = build_cost(cfg_for(root / "llama", objective={"name": "emo", "cost": "adaptive"}), model, len(tok))
    with torch.no_grad():
        model.lm_head.weight.mul_(2).add_(1)
    w = model.lm_head.weight.detach()
    assert torch.allclose(adaptive.matrix(), unit(w))  # follows the live head


def test_external_cost_vocab_mismatch_names_the_checkpoint(saved):
    root, tok = saved
    model = load_model(cfg_for(root / "llama"), tok)
    ok = build_cost(cfg_for(root / "llama", objective={"cost": "external", "cost_source": str(root / "tied")}), model, len(tok))
    emb = head_from_file(root / "tied")
    assert torch.equal(ok.matrix(), unit(emb))
    bad = cfg_for(root / "llama", objective={"cost": "external", "cost_source": str(root / "othervocab")})
    with pytest.raises(EmotuneError, match=r"othervocab has \d+ rows but the model's vocabulary has \d+ tokens"):
        build_cost(bad, model, len(tok))


def test_explicit_dtype_and_no_remote_code(saved):
    root, tok = saved
    model = load_model(cfg_for(root / "llama", model={"torch_dtype": "bfloat16"}), tok)
    assert model.dtype == torch.bfloat16
    assert cfg_for(root / "llama").model.trust_remote_code is False
    with pytest.raises(EmotuneError, match="model.name_or_path"):
        load_model(cfg_for(root / "nothing-here"), tok)


def test_pad_token_policies(saved):
    from transformers import AutoTokenizer

    root, _ = saved
    tok = AutoTokenizer.from_pretrained(str(root / "nopad"))
    assert ensure_pad_token(tok, "eos") is False and tok.pad_token_id == tok.eos_token_id
    tok = AutoTokenizer.from_pretrained(str(root / "nopad"))
    n = len(tok)
    assert ensure_pad_token(tok, "add") is True and len(tok) == n + 1 and tok.pad_token == "<pad>"
    assert ensure_pad_token(tok, "add") is False  # already has one now
