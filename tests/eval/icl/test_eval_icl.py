"""ICL and MMLU prompt construction (exact strings), MMLU metrics, and the `emotune eval` command."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from eval_builders import TEST_TEXTS, TRAIN_TEXTS, build_llama, build_tokenizer, rows, write_jsonl  # noqa: F401

from emotune.cli import main as emotune
from emotune.errors import EmotuneError
from emotune.eval.icl import mmlu
from emotune.eval.icl.classification import build_ice, prepare, run_icl_task
from emotune.eval.summary import read_summary
from emotune.tasks.files import load_task, task_from_dict


class FixedRetriever:
    """Returns given ids (retrieval itself is tested against a reference in test_eval_retriever.py)."""

    def __init__(self, ids):
        self.ids = ids

    def retrieve(self, index_texts, query_texts, k, task="t"):
        return [self.ids[:k] for _ in query_texts]

    def settings(self):
        return {"encoder": "fixed"}


def test_icl_prompts_are_openicl_strings(tmp_path):
    task = load_task("sst2")
    write_jsonl(tmp_path / "sst2" / "train.jsonl", [{"text": "good", "label": 0}, {"text": "bad", "label": 1},
                                                     {"text": "fine", "label": 0}])
    write_jsonl(tmp_path / "sst2" / "test.jsonl", [{"text": "great", "label": 0}])
    task.ice_num = 2
    _, gold, ids, prompts, _ = prepare(task, FixedRetriever([1, 2]), data_dir=tmp_path)
    assert ids == [[1, 2]] and gold == [0]
    ice = 'Review: "bad" It is negative.\nReview: "fine" It is positive.\n'  # most similar demo first
    assert prompts == [[ice + 'Review: "great" It is positive.', ice + 'Review: "great" It is negative.']]
    assert build_ice(task, [{"text": "x"}], [], []) == "\n"  # OpenICL's ice_eos_token even with no demos


def test_multi_column_inputs():
    task = task_from_dict({"name": "nli", "kind": "icl", "input_columns": {"premise": "<X1>", "hypothesis": "<X2>"},
                           "templates": {0: "<X1>? Yes, <X2>", 1: "<X1>? No, <X2>"}})
    row = {"premise": "A man sleeps", "hypothesis": "a man rests", "label": 0}
    assert task.input_text(row) == "A man sleeps a man rests"
    assert task.fill(1, row) == "A man sleeps? No, a man rests"


def mmlu_rows(subject, tag, n):
    return [{"subject": subject, "question": f"Q{tag}{i}", "choices": [f"a{i}", f"b{i}", f"c{i}", f"d{i}"],
             "answer": i % 4} for i in range(n)]


def test_mmlu_prompt_is_opencompass_mmlu_ppl():
    dev = mmlu_rows("high_school_physics", "d", 2)
    cands = mmlu.candidates("high_school_physics", dev, mmlu_rows("high_school_physics", "t", 1)[0], "row")
    prefix = ("The following are multiple choice questions (with answers) about  high school physics.\n\n"
              "Qd0\nA. a0\nB. b0\nC. c0\nD. d0\nAnswer: A\n\n"
              "Qd1\nA. a1\nB. b1\nC. c1\nD. d1\nAnswer: B\n\n")
    assert cands == [prefix + f"Qt0\nA. a0\nB. b0\nC. c0\nD. d0\nAnswer: {x}" for x in "ABCD"]
    with pytest.raises(EmotuneError, match="answer"):
        mmlu.answer_index(7, "row 3")
    assert mmlu.answer_index("c", "r") == 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("evalcli")
    tok = build_tokenizer(d / "model")
    build_llama(d / "model", len(tok), seed=2)
    data = d / "data"
    write_jsonl(data / "trec" / "train.jsonl", rows(TRAIN_TEXTS, 6, "coarse_label"))
    write_jsonl(data / "trec" / "test.jsonl", rows(TEST_TEXTS, 6, "coarse_label"))
    for name in ("sst2", "cr"):
        write_jsonl(data / name / "train.jsonl", rows(TRAIN_TEXTS, 2))
        write_jsonl(data / name / "test.jsonl", rows(TEST_TEXTS, 2))
    subjects = [("anatomy", 3), ("abstract_algebra", 5)]
    write_jsonl(data / "mmlu" / "test.jsonl", [r for s, n in subjects for r in mmlu_rows(s, "t", n)])
    write_jsonl(data / "mmlu" / "dev.jsonl", [r for s, _ in subjects for r in mmlu_rows(s, "d", 6)])
    return d


def run(setup, out, *extra, tasks="trec,sst2,mmlu"):
    return emotune(["eval", "--model", str(setup / "model"), "--tasks", tasks, "--out", str(out),
                    f"data_dir={setup / 'data'}", f"cache_dir={setup / 'cache'}", "progress=false", *extra])


def test_eval_command_writes_predictions_and_summary(setup, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(setup, out) == 0
    summary = read_summary(out / "summary.json")
    assert summary["model"] == str(setup / "model") and summary["emotune_version"]
    assert set(summary["tasks"]) == {"trec", "sst2", "mmlu"}
    trec = summary["tasks"]["trec"]
    assert trec["kind"] == "icl" and trec["n_examples"] == len(TEST_TEXTS)
    assert trec["settings"]["scoring"] == "full" and trec["settings"]["encoder"] == "all-MiniLM-L6-v2"
    preds = [json.loads(x) for x in (out / trec["predictions"]).read_text().splitlines()]
    assert len(preds) == len(TEST_TEXTS) and len(preds[0]["demo_ids"]) == 8
    assert set(preds[0]["scores"]) == {str(i) for i in range(6)}
    for p in preds:  # prediction = lowest score, accuracy = share of correct rows
        assert str(p["prediction"]) == min(p["scores"], key=p["scores"].get)
    assert trec["metrics"]["accuracy"] == pytest.approx(np.mean([p["prediction"] == p["gold"] for p in preds]))

    def stderr(xs):  # the harness's: sample std (ddof 1) of the 0/1 scores over sqrt(n)
        return np.std(np.asarray(xs, dtype=np.float64), ddof=1) / np.sqrt(len(xs))

    assert trec["metrics"]["accuracy_stderr"] == pytest.approx(stderr([p["prediction"] == p["gold"] for p in preds]))
    accs = {k: t["metrics"]["accuracy"] for k, t in summary["tasks"].items()}
    assert summary["averages"]["icl_mean_accuracy"] == pytest.approx((accs["trec"] + accs["sst2"]) / 2)
    assert summary["averages"]["mean_accuracy"] == pytest.approx(np.mean(list(accs.values())))

    m = summary["tasks"]["mmlu"]
    mp = [json.loads(x) for x in (out / m["predictions"]).read_text().splitlines()]
    assert m["n_examples"] == len(mp) == 8
    per = {s: np.mean([p["correct"] for p in mp if p["subject"] == s]) for s in ("anatomy", "abstract_algebra")}
    assert m["metrics"]["accuracy"] == pytest.approx(np.mean([p["correct"] for p in mp]))  # micro
    assert m["metrics"]["accuracy_macro"] == pytest.approx(np.mean(list(per.values())))  # macro
    assert m["metrics"]["subject/anatomy"] == pytest.approx(per["anatomy"])
    assert m["metrics"]["accuracy_stderr"] == pytest.approx(stderr([p["correct"] for p in mp]))
    assert m["metrics"]["subject/anatomy_stderr"] == pytest.approx(stderr([p["correct"] for p in mp if p["subject"] == "anatomy"]))
    assert "accuracy_macro_stderr" not in m["metrics"]  # a mean of subject means is not a proportion
    for p in mp:  # every candidate prompt recorded: the common text once, the letters after it
        assert p["prompt_prefix"].endswith("\nAnswer: ") and p["prompt_endings"] == {x: x for x in "ABCD"}

    # resume: finished tasks are not redone, new ones are added
    capsys.readouterr()
    assert run(setup, out, tasks="trec,sst2,mmlu,cr") == 0
    log = capsys.readouterr().out
    assert "trec: already in" in log and "cr (icl)" in log
    assert set(read_summary(out / "summary.json")["tasks"]) == {"trec", "sst2", "mmlu", "cr"}


def test_naive_and_continuation_switches(setup, tmp_path):
    assert run(setup, tmp_path / "a", tasks="trec") == 0
    assert run(setup, tmp_path / "b", "shared_prefix=false", tasks="trec") == 0
    assert run(setup, tmp_path / "c", "scoring=continuation", tasks="trec") == 0
    a, b, c = ([json.loads(x) for x in (tmp_path / k / "trec.predictions.jsonl").read_text().splitlines()]
               for k in "abc")
    for x, y in zip(a, b):
        np.testing.assert_allclose(list(x["scores"].values()), list(y["scores"].values()), atol=1e-5)
        assert x["prediction"] == y["prediction"]
    assert read_summary(tmp_path / "c" / "summary.json")["tasks"]["trec"]["settings"]["scoring"] == "continuation"
    assert a[0]["scores"] != c[0]["scores"]


def test_bad_cli_input_exits_2_with_one_line(setup, tmp_path, capsys, monkeypatch):
    assert run(setup, tmp_path / "o", "batch_size=0", tasks="trec") == 2
    assert "batch_size" in capsys.readouterr().err
    assert run(setup, tmp_path / "o", "colour=blue", tasks="trec") == 2
    assert "unknown key 'colour'" in capsys.readouterr().err
    assert run(setup, tmp_path / "o", tasks="no_such_task") == 2
    assert "unknown task 'no_such_task'" in capsys.readouterr().err
    assert emotune(["eval", "--model", str(tmp_path / "missing"), "--tasks", "trec", "--out", str(tmp_path)]) == 2
    assert "--model" in capsys.readouterr().err
    # a generation task dispatches to emotune.eval.generation.task; without that module: a clear error
    gen = tmp_path / "gen.yaml"
    gen.write_text("name: gen\nkind: generation\ndataset: {path: wikitext}\ntext_column: text\nprefix_words: 2\n"
                   "continuation_words: 3\nnew_tokens: 3\n")
    monkeypatch.setitem(sys.modules, "emotune.eval.generation.task", None)
    assert run(setup, tmp_path / "g", tasks=str(gen)) == 2
    err = capsys.readouterr().err
    assert "gen.yaml" in err and "emotune.eval.generation.task" in err and "Traceback" not in err


def test_max_tokens_drops_the_least_similar_demos(setup, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(setup / "model"))
    model = AutoModelForCausalLM.from_pretrained(str(setup / "model")).eval()
    task = load_task("sst2")
    full = run_icl_task(task, model, tok, tmp_path / "a", retriever=FixedRetriever(list(range(8))),
                        data_dir=setup / "data", progress=False)
    cut = run_icl_task(task, model, tok, tmp_path / "b", retriever=FixedRetriever(list(range(8))),
                       data_dir=setup / "data", max_tokens=110, progress=False)
    a = [json.loads(x) for x in (tmp_path / "a" / full.predictions).read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "b" / cut.predictions).read_text().splitlines()]
    assert all(len(r["demo_ids"]) == 8 for r in a)
    for r in b:
        assert 0 < len(r["demo_ids"]) < 8 and r["demo_ids"] == list(range(len(r["demo_ids"])))  # kept the first


def task_file(path, data, ice_num=8, template='Review: "<X>" It is positive.'):
    path.write_text(f"name: my_task\nkind: icl\ndataset: {{data_files: {{train: {data / 'sst2' / 'train.jsonl'}, "
                    f"test: {data / 'sst2' / 'test.jsonl'}}}}}\ninput_columns: [text]\nice_num: {ice_num}\n"
                    f"templates:\n  0: '{template}'\n  1: 'Review: \"<X>\" It is negative.'\n")
    return path


def test_documented_form_and_every_prompt_in_the_predictions_file(setup, tmp_path):
    from transformers import AutoTokenizer

    from emotune.eval.icl.retriever import TopkRetriever

    task = task_file(tmp_path / "my_task.yaml", setup / "data")
    out = tmp_path / "out"
    # the task file first, options in between, settings last: as docs/evaluation.md shows it
    assert emotune(["eval", str(task), "--model", str(setup / "model"), "--out", str(out), "limit=3",
                    f"cache_dir={setup / 'cache'}", "progress=false"]) == 0
    result = read_summary(out / "summary.json")["tasks"]["my_task"]
    assert result["n_examples"] == 3 and result["settings"]["roundtrip_tokenizer"] == "model"
    records = [json.loads(x) for x in (out / result["predictions"]).read_text().splitlines()]
    # the prompts the model saw, rebuilt independently of the evaluation run
    tok = AutoTokenizer.from_pretrained(str(setup / "model"))
    _, _, ids, prompts, _ = prepare(load_task(str(task)), TopkRetriever(None, cache_dir=setup / "cache"), limit=3,
                                    tokenizer=tok)
    assert [r["demo_ids"] for r in records] == ids
    for r, cands in zip(records, prompts):
        assert [r["prompt_prefix"] + r["prompt_endings"][k] for k in ("0", "1")] == cands
        assert r["prompt_endings"] == {"0": "positive.", "1": "negative."}  # the common text is stored once


def load_tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def test_resume_only_with_the_same_settings(setup, tmp_path, capsys):
    out = tmp_path / "out"
    model = tmp_path / "model"
    import shutil

    shutil.copytree(setup / "model", model)
    task = task_file(tmp_path / "my_task.yaml", setup / "data")

    def again(*extra, ok=True):
        capsys.readouterr()
        rc = emotune(["eval", str(task), "--model", str(model), "--out", str(out), "limit=2",
                      f"cache_dir={setup / 'cache'}", "progress=false", *extra])
        return rc, capsys.readouterr()

    assert again()[0] == 0
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}  # eval/: the result store
    rc, cap = again("batch_size=3", "shared_prefix=false")  # speed only: the same results, skipped
    assert rc == 0 and "my_task: already in" in cap.out
    assert (out / "my_task.predictions.jsonl").read_bytes() == files["my_task.predictions.jsonl"]
    entry = read_summary(out / "summary.json")["tasks"]["my_task"]

    def refused(setting, *extra):
        rc, cap = again(*extra)
        assert rc == 2 and cap.err.count("\n") == 1 and "Traceback" not in cap.err, cap.err
        assert "my_task" in cap.err and f"with {setting}=" in cap.err and "summary.json" in cap.err, cap.err
        assert read_summary(out / "summary.json")["tasks"]["my_task"] == entry  # nothing lost
        assert (out / "my_task.predictions.jsonl").read_bytes() == files["my_task.predictions.jsonl"]

    refused("limit", "limit=3")
    refused("scoring", "scoring=continuation")
    refused("roundtrip_tokenizer", "roundtrip_tokenizer=none")
    refused("encoder", "encoder=all-mpnet-base-v2")
    refused("dtype", "dtype=bfloat16")
    task_file(task, setup / "data", ice_num=4)
    refused("ice_num")
    task_file(task, setup / "data", template='Review: "<X>" It was positive.')
    refused("task_definition")
    task_file(task, setup / "data")
    weights = (model / "model.safetensors").read_bytes()
    build_llama(model, len(load_tokenizer(model)), seed=11)  # other weights in the same folder
    refused("model")
    (model / "model.safetensors").write_bytes(weights)  # the original weights again: skipped
    rc, cap = again()
    assert rc == 0 and "already in" in cap.out
    # resume=false evaluates again with the new settings
    rc, cap = again("limit=3", "resume=false")
    assert rc == 0 and read_summary(out / "summary.json")["tasks"]["my_task"]["n_examples"] == 3
    # a result that records no settings (an older emotune) is not trusted
    summary = read_summary(out / "summary.json")
    del summary["tasks"]["my_task"]["settings"]["resume_key"]
    (out / "summary.json").write_text(json.dumps(summary))
    rc, cap = again("limit=3")
    assert rc == 2 and "records no settings" in cap.err and cap.err.count("\n") == 1


def test_positional_arguments_are_task_files_or_settings(setup, tmp_path, capsys):
    model = ["--model", str(setup / "model")]
    assert emotune(["eval", "sst2", *model, "--out", str(tmp_path / "o")]) == 2  # a task name, not a file
    err = capsys.readouterr().err
    assert "'sst2'" in err and "--tasks" in err and err.count("\n") == 1
    (tmp_path / "file").write_text("x")
    assert emotune(["eval", *model, "--tasks", "sst2", "--out", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "not a folder" in err and err.count("\n") == 1
    assert (tmp_path / "file").read_text() == "x"


def test_model_fingerprint_is_the_weights_not_the_folder(setup, tmp_path):
    import shutil

    from emotune.eval.resume import model_fingerprint

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(setup / "model", a)
    shutil.copytree(setup / "model", b)
    assert model_fingerprint(str(a)) == model_fingerprint(str(b))  # moved or copied: the same model
    (a / "summary.json").write_text("{}")  # `--out` may be the model folder itself
    (a / "sst2.predictions.jsonl").write_text("")
    assert model_fingerprint(str(a)) == model_fingerprint(str(b))
    (b / "config.json").write_text((b / "config.json").read_text().replace("}", ', "note": 1}', 1))
    assert model_fingerprint(str(a)) != model_fingerprint(str(b))
    # an emotune checkpoint: its manifest's hashes, not a re-hash of the weights
    (a / "manifest.json").write_text(json.dumps({"files": {"model.safetensors": "ab" * 32}}))
    assert model_fingerprint(str(a)).startswith("manifest:")
    assert model_fingerprint("no-such-org/no-such-model") == "hub:no-such-org/no-such-model"


def test_one_summary_holds_one_model(setup, tmp_path, capsys):
    import shutil

    out, moved, other = tmp_path / "out", tmp_path / "moved", tmp_path / "other"
    shutil.copytree(setup / "model", moved)
    shutil.copytree(setup / "model", other)
    build_llama(other, len(load_tokenizer(other)), seed=7)
    assert run(setup, out, "limit=2", tasks="sst2") == 0
    before = (out / "summary.json").read_bytes()
    capsys.readouterr()
    # the same weights in another folder: the same model, its results are reused
    assert emotune(["eval", "--model", str(moved), "--tasks", "sst2", "--out", str(out), "limit=2",
                    f"data_dir={setup / 'data'}", f"cache_dir={setup / 'cache'}", "progress=false"]) == 0
    assert "sst2: already in" in capsys.readouterr().out
    # other weights: not mixed into this summary, even for a task it does not hold yet
    assert emotune(["eval", "--model", str(other), "--tasks", "cr", "--out", str(out), "limit=2",
                    f"data_dir={setup / 'data'}", f"cache_dir={setup / 'cache'}", "progress=false"]) == 2
    err = capsys.readouterr().err
    assert "another model" in err and "'sst2'" in err and err.count("\n") == 1
    assert not (out / "cr.predictions.jsonl").exists()
    assert read_summary(out / "summary.json")["tasks"] == json.loads(before)["tasks"]
