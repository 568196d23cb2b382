"""The evaluator's one config grammar (emotune/eval/options.py, emotune/tasks/schema.py) and its one
LM plumbing (emotune/eval/lm.py)."""

import numpy as np
import pytest
import torch

from emotune.cli import main as emotune
from emotune.errors import EmotuneError
from emotune.eval import lm
from emotune.eval.icl import mmlu
from emotune.eval.options import EvalOptions, generation_options, parse_overrides
from emotune.tasks.files import load_task, task_from_dict


def test_help_lists_every_option_with_its_meaning(capsys):
    assert emotune(["eval", "--help"]) == 0
    out = capsys.readouterr().out
    for name, field in EvalOptions.model_fields.items():
        assert f"  {name}=" in out and field.description and field.description.split()[0] in out


@pytest.mark.parametrize("item, words", [
    ("batch_size=0", ["batch_size=0", "positive integer"]), ("batch_size=true", ["batch_size", "positive integer"]),
    ("limit=2.5", ["limit"]), ("shared_prefix=maybe", ["shared_prefix", "true or false"]),
    ("scoring=best", ["scoring"]), ("dtype=int8", ["dtype", "float32"]), ("metrics=rouge,bleu", ["metrics", "bleu"]),
    ("colour=blue", ["unknown key 'colour'"]), ("novalue", ["expected key=value"])])
def test_bad_options_are_one_line_naming_the_key(item, words):
    with pytest.raises(EmotuneError) as err:
        parse_overrides([item])
    assert all(w in str(err.value) for w in words) and "\n" not in str(err.value), str(err.value)


def test_options_parse_as_yaml_scalars_and_keep_their_defaults():
    opts = parse_overrides(["limit=3", "roundtrip_tokenizer=none", "shared_prefix=false", "metrics=rouge"])
    assert (opts["limit"], opts["roundtrip_tokenizer"], opts["shared_prefix"], opts["metrics"]) == (3, None, False, "rouge")
    assert (opts["batch_size"], opts["encoder"], opts["runs"]) == (8, "default", None)
    # generation: defaults < the task file's options < the command line where it sets a value
    gen = generation_options({"runs": 2, "seed": 4}, {"runs": None, "seed": 7, "scoring": "full"}, "t.yaml")
    assert (gen["runs"], gen["seed"], gen["gen_batch_size"], gen["metrics"]) == (2, 7, 32, list(
        ("mauve", "rouge", "ppl_test", "ppl_oracle", "ce")))
    with pytest.raises(EmotuneError, match=r"t\.yaml: unknown generation option 'rnus'"):
        generation_options({"rnus": 2}, {}, "t.yaml")


def test_task_files_refuse_unknown_keys():
    base = {"name": "t", "kind": "icl", "input_columns": ["text"], "templates": {0: "<X> a", 1: "<X> b"}}
    task_from_dict(base, "t.yaml")
    with pytest.raises(EmotuneError, match=r"t\.yaml: unknown key 'ice_nmu'"):
        task_from_dict({**base, "ice_nmu": 4}, "t.yaml")
    with pytest.raises(EmotuneError, match=r"t\.yaml: key 'ice_num'"):
        task_from_dict({**base, "ice_num": -1}, "t.yaml")


def test_the_mmlu_prompt_is_the_task_files_data():
    task = load_task("mmlu")
    prompt = mmlu.read_task(task).prompt
    assert prompt is not None and prompt == mmlu.shipped_prompt()
    rows = [{"subject": "s", "question": "Q {x}", "choices": ["a", "b", "c", "d"], "answer": 2}]
    other = prompt.model_copy(update={"answer": "\nThe answer is {answer}", "hint": "About {subject}:\n"})
    cands = mmlu.candidates("my_subject", rows, rows[0], "row", other)
    assert cands[1] == "About my subject:\nQ {x}\nA. a\nB. b\nC. c\nD. d\nThe answer is C\n\nQ {x}\nA. a\nB. b\nC. c\n" \
                       "D. d\nThe answer is B"


def test_token_nlls_match_a_float64_reference():
    from eval_builders import build_llama

    model = build_llama(None, 40, seed=3)
    seqs = [[1, 5, 7, 9], [1], [1, 3, 3, 8, 20, 31], [1, 4]]
    ref = []
    for s in seqs:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([s])).logits[0].double()
        logp = torch.log_softmax(logits, -1)
        ref.append(np.array([-float(logp[t - 1, s[t]]) for t in range(1, len(s))]))
    for longest_first in (False, True):
        got = lm.token_nlls(model, seqs, batch_size=3, longest_first=longest_first)
        for g, r in zip(got, ref):
            np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)
    ids, mask = lm.pad_left([[4, 5], [6]], pad_id=0)
    assert ids.tolist() == [[4, 5], [0, 6]] and mask.tolist() == [[1, 1], [0, 1]]


def test_loading_names_the_setting(tmp_path):
    with pytest.raises(EmotuneError, match=r"oracle: model directory .*nope not found"):
        lm.load_causal_lm(str(tmp_path / "nope"), "oracle", "float32", "cpu")
    with pytest.raises(EmotuneError, match=r"argument device='banana'"):
        lm.load_causal_lm(str(tmp_path), "--model", "auto", "banana")
