"""Conversations (data.format: chat): the assistant-only mask against two independent references (the string the
template must render, tokenised piece by piece; transformers' own `{% generation %}` mask), ShareGPT = messages,
truncation, refused templates, record checks, the template setting and the cache."""

import copy
import json

import pytest
from train_builders import alpaca_rows

from emotune.errors import EmotuneError
from emotune.train import chat as C
from emotune.train import data as D
from emotune.train.config import validate

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
CHATML = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# The same rendering, with transformers' {% generation %} markers around each reply and its end of turn.
CHATML_GEN = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'assistant' %}<|im_start|>assistant\n"
              "{% generation %}{{ m['content'] }}<|im_end|>\n{% endgeneration %}{% else %}<|im_start|>{{ m['role'] }}\n"
              "{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CONVERSATION = [
    {"role": "system", "content": "Answer in words from the river town ."},
    {"role": "user", "content": "What is 3 plus 4?"},
    {"role": "assistant", "content": "3 plus 4 is 7 ."},
    {"role": "user", "content": "And the old bridge?"},
    {"role": "assistant", "content": "the old bridge was built in winter ."},
    {"role": "user", "content": "north harbour"},
    {"role": "assistant", "content": "quiet harbour library road ."},
]
SHAREGPT = {"system": "system", "user": "human", "assistant": "gpt"}


@pytest.fixture(scope="module")
def tok(tiny_cache):
    t = tiny_cache.load_tokenizer("train")
    t.add_special_tokens({"additional_special_tokens": [IM_START, IM_END]})
    t.chat_template = CHATML
    return t


def chat_cfg(tmp_path, **data):
    return validate({"output_dir": str(tmp_path / "out"), "model": {"name_or_path": "m"}, "seed": 3,
                     "data": {"format": "chat", "train_files": [str(tmp_path / "chat.jsonl")], **data}}).data


def sharegpt(messages):
    return [{"from": SHAREGPT[m["role"]], "value": m["content"]} for m in messages]


def targets(ids, labels):
    assert len(ids) == len(labels)
    assert all(lab == i for i, lab in zip(ids, labels) if lab != -100)  # a target is always the token itself
    return [lab for lab in labels if lab != -100]


def spans(labels):
    return sum(1 for i, lab in enumerate(labels) if lab != -100 and (i == 0 or labels[i - 1] == -100))


def test_labels_are_exactly_the_assistant_replies_and_their_end_of_turn(tok):
    ids, labels, cut = C.tokenize_conversation(tok, CONVERSATION, max_length=1024)
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    # reference 1: the string the template must render, written out by hand, tokenised whole ...
    text = tok.bos_token + "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in CONVERSATION)
    assert not cut and ids == enc(text)
    # ... and the targets: each reply's own tokens + the end-of-turn tokens after it, tokenised on their own
    im_end = tok.convert_tokens_to_ids(IM_END)
    expected = [t for m in CONVERSATION if m["role"] == "assistant" for t in enc(m["content"]) + [im_end] + enc("\n")]
    assert targets(ids, labels) == expected
    assert spans(labels) == 3  # all three assistant turns, nothing of the system / user turns
    assert tok.decode(targets(ids, labels)) == "".join(f"{m['content']}{IM_END}\n" for m in CONVERSATION
                                                       if m["role"] == "assistant")


@pytest.mark.parametrize("turns", [3, 5, 7])
def test_mask_equals_transformers_generation_mask(tok, turns):
    """Reference 2: transformers' assistant mask from a template with {% generation %}; ours uses no such markers."""
    messages = CONVERSATION[:turns]
    ref_tok = copy.deepcopy(tok)
    ref_tok.chat_template = CHATML_GEN
    ref = ref_tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ref_labels = [i if m else -100 for i, m in zip(ref["input_ids"], ref["assistant_masks"])]
    ids, labels, _ = C.tokenize_conversation(tok, messages, max_length=1024)
    assert ids == ref["input_ids"] and labels == ref_labels
    assert C.tokenize_conversation(ref_tok, messages, max_length=1024)[:2] == (ids, labels)  # markers change nothing


def test_sharegpt_and_messages_give_the_same_example(tok, tmp_path):
    rows = [{"messages": CONVERSATION}, {"conversations": sharegpt(CONVERSATION)}, {"messages": sharegpt(CONVERSATION)}]
    ex, stats = C.tokenize_conversations(rows, tok, chat_cfg(tmp_path))
    assert stats["examples"] == 3 and stats["assistant_turns"] == 9
    for ids, labels in ex[1:]:
        assert ids.tolist() == ex[0][0].tolist() and labels.tolist() == ex[0][1].tolist()
    own = C.tokenize_conversations([{"dialog": sharegpt(CONVERSATION)}], tok, chat_cfg(tmp_path, messages_column="dialog"))[0]
    assert own[0][1].tolist() == ex[0][1].tolist()


def test_truncation_keeps_the_mask(tok, tmp_path, caplog):
    full_ids, full_labels, _ = C.tokenize_conversation(tok, CONVERSATION, max_length=1024)
    first = next(i for i, lab in enumerate(full_labels) if lab != -100)
    second_end = max(i for i, lab in enumerate(full_labels[: len(full_labels) - 20]) if lab != -100)
    for limit in (first + 3, second_end - 2, len(full_ids) - 1):
        ids, labels, cut = C.tokenize_conversation(tok, CONVERSATION, max_length=limit)
        assert cut and ids == full_ids[:limit] and labels == full_labels[:limit]
    rows = [{"messages": CONVERSATION}, {"messages": [{"role": "user", "content": "word " * 200},
                                                      {"role": "assistant", "content": "never seen ."}]}]
    ex, stats = C.tokenize_conversations(rows, tok, chat_cfg(tmp_path, max_length=first + 3))
    assert stats["examples"] == 1 and stats["dropped_response_cut"] == 1 and stats["truncated"] == 2
    assert "1 of 2 conversations dropped" in caplog.text


@pytest.mark.parametrize("template", [
    # drops earlier replies (as reasoning-stripping templates do): a reply renders differently once one follows it
    "{% for m in messages %}{{ m['role'] }}: {% if m['role'] != 'assistant' or loop.last %}{{ m['content'] }}"
    "{% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}",
    # a header that depends on the whole conversation
    "turns {{ messages | length }}\n{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
])
def test_template_that_is_not_prefix_consistent_is_refused(tok, template):
    t = copy.deepcopy(tok)
    t.chat_template = template
    with pytest.raises(EmotuneError, match="not prefix-consistent") as err:
        C.tokenize_conversation(t, CONVERSATION, max_length=1024, where="training data: record 1")
    assert "\n" not in str(err.value) and "record 1" in str(err.value)


def test_template_raising_names_the_record(tok, tmp_path):
    t = copy.deepcopy(tok)
    t.chat_template = ("{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
                       "{{ raise_exception('roles must alternate user/assistant') }}{% endif %}{{ m['content'] }}{% endfor %}")
    rows = [{"messages": CONVERSATION[1:3]}, {"messages": CONVERSATION[:3]}]
    with pytest.raises(EmotuneError, match="record 2: the chat template refused this conversation: .*alternate"):
        C.tokenize_conversations(rows, t, chat_cfg(tmp_path))


@pytest.mark.parametrize("row, fragments", [
    ({"messages": []}, ["empty conversation"]),
    ({"messages": [{"role": "user", "content": "hi"}]}, ["no assistant turn"]),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}, ["turn 2", "unknown role 'bot'"]),
    ({"conversations": [{"from": "user", "value": "hi"}, {"from": "gpt", "value": "x"}]}, ["turn 1", "unknown from 'user'"]),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 7}]}, ["turn 2", "'content'", "int"]),
    ({"conversations": [{"from": "human", "value": None}, {"from": "gpt", "value": "x"}]}, ["turn 1", "'value'", "nothing"]),
    ({"messages": [{"role": "user", "content": "hi"}, {"from": "gpt", "value": "x"}]}, ["turn 2", "mixes"]),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}, {"role": "assistant", "content": "c"}]},
     ["turn 2", "system turn"]),
    ({"messages": "hello"}, ["list of turns"]),
    ({"messages": ["hello"]}, ["turn 1", "object"]),
    ({"messages": [{"speaker": "a", "text": "b"}]}, ["turn 1", "neither role/content"]),
    ({"text": "x"}, ["no 'messages' or 'conversations' field", "data.messages_column"]),
])
def test_every_bad_record_is_one_line_naming_the_place(tmp_path, row, fragments):
    with pytest.raises(EmotuneError) as err:
        C.conversation_of(row, chat_cfg(tmp_path), "chat.jsonl: line 4")
    msg = str(err.value)
    assert msg.startswith("chat.jsonl: line 4") and "\n" not in msg
    for f in fragments:
        assert f in msg, (f, msg)


def test_local_files_are_checked_record_by_record(tmp_path):
    good = json.dumps({"messages": CONVERSATION[1:3]})
    (tmp_path / "chat.jsonl").write_text("\n".join([good, good, json.dumps({"messages": [{"role": "user", "content": "x"}]}), good]))
    cfg = validate({"output_dir": str(tmp_path / "o"), "model": {"name_or_path": "m"},
                    "data": {"format": "chat", "train_files": [str(tmp_path / "chat.jsonl")]}})
    with pytest.raises(EmotuneError, match=r"chat.jsonl: line 3: field 'messages' has no assistant turn"):
        D.check_local_files(cfg)
    (tmp_path / "chat.txt").write_text("a\n")
    with pytest.raises(EmotuneError, match="conversation .* must be .jsonl"):
        D._read_local(str(tmp_path / "chat.txt"), cfg.data)


def test_chat_template_setting(tok, tmp_path):
    (tmp_path / "t.jinja").write_text(CHATML)
    assert C.resolve_template(chat_cfg(tmp_path, chat_template=str(tmp_path / "t.jinja"))) == CHATML
    assert C.resolve_template(chat_cfg(tmp_path, chat_template=CHATML)) == CHATML
    with pytest.raises(EmotuneError, match="data.chat_template: .*neither a template file nor a Jinja template"):
        C.resolve_template(chat_cfg(tmp_path, chat_template=str(tmp_path / "missing.jinja")))
    with pytest.raises(EmotuneError, match="data.chat_template: not a valid Jinja template"):
        C.resolve_template(chat_cfg(tmp_path, chat_template="{% for m in messages %}{{ m }}"))
    # a tokenizer without a template: the error names where the tokenizer came from and the key that fixes it
    bare = copy.deepcopy(tok)
    bare.chat_template = None
    cfg = validate({"output_dir": "o", "model": {"name_or_path": "my/model"},
                    "data": {"format": "chat", "train_files": [str(tmp_path / "t.jinja")]}})
    with pytest.raises(EmotuneError, match=r"model.name_or_path \(my/model\): the tokenizer has no chat template.*data.chat_template"):
        C.prepare_tokenizer(bare, cfg)
    C.prepare_tokenizer(bare, cfg.model_copy(update={"data": chat_cfg(tmp_path, chat_template=CHATML)}))
    assert bare.chat_template == CHATML
    with pytest.raises(EmotuneError, match="data.chat_template is for conversations"):
        validate({"output_dir": "o", "model": {"name_or_path": "m"},
                  "data": {"format": "instruction", "train_files": ["a.jsonl"], "chat_template": CHATML}})


def test_chat_splits_and_the_cache_follow_the_template(tok, tmp_path):
    rows = [{"messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]}
            for r in alpaca_rows(20)]
    (tmp_path / "chat.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = validate({"output_dir": str(tmp_path / "o"), "model": {"name_or_path": "m"},
                    "data": {"format": "chat", "train_files": [str(tmp_path / "chat.jsonl")], "validation_split_percentage": 10}})
    train, val = D.load_datasets(cfg, tok)
    assert len(train) == 18 and len(val) == 2 and train.stats["assistant_turns"] == 18
    other = copy.deepcopy(tok)
    other.chat_template = CHATML.replace("{{ bos_token }}", "")
    train2, _ = D.load_datasets(cfg, other)  # another template is other data: not the cached arrays
    assert len(list((tmp_path / "o" / "data-cache").glob("*.npz"))) == 4
    assert [len(x) for x in train2.input_ids] == [len(x) - 1 for x in train.input_ids]


def test_shipped_tiny_chat_example(tok, tmp_path):
    """configs/train/tiny-cpu-chat.yaml: its data (both layouts) pass the checks and its template masks every reply."""
    from emotune.resources import shipped
    from emotune.train.config import load_config

    cfg = load_config(shipped("train/tiny-cpu-chat.yaml"), [f"output_dir={tmp_path / 'o'}"])
    D.check_local_files(cfg)
    t = copy.deepcopy(tok)
    C.prepare_tokenizer(t, cfg)
    assert t.chat_template == shipped("train/data/tiny_chat.jinja").read_text()
    records = D.read_records(cfg)
    rows = records.train + records.validation
    ex, stats = C.tokenize_conversations(rows, t, cfg.data)
    assert stats["examples"] == len(rows) == 80 and stats["truncated"] == 0
    for (ids, labels), row in zip(ex, rows):
        replies = [m["content"] for m in C.conversation_of(row, cfg.data, "row") if m["role"] == "assistant"]
        assert spans(labels.tolist()) == len(replies)
        assert t.decode(targets(ids.tolist(), labels.tolist())) == "".join(f"{r}{t.eos_token}\n" for r in replies)
