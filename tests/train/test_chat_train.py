"""A tiny instruction-tuning run on conversations (data.format: chat) on real DeepSpeed ZeRO-3 (one CPU rank): the
loss falls, and the exported tokenizer carries the chat template the data was rendered with."""

import json

from train_builders import alpaca_rows, losses_from_log, run_config, single_rank, tiny_setup

from emotune.train.config import validate
from emotune.train.recipe import run

# Plain-text role markers (the tiny tokenizer has no special tokens for them) and EOS to end each reply. The newlines
# are Jinja strings: transformers renders with trim_blocks, which drops a newline right after a {% ... %} tag.
TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] }}"
            "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}")


def test_chat_run_learns_and_exports_its_template(tmp_path):
    setup = tiny_setup(tmp_path / "setup")
    rows = alpaca_rows(48)
    with open(tmp_path / "chat.jsonl", "w") as f:
        for i, r in enumerate(rows):  # both layouts in one file, two assistant turns each
            turns = [("user", r["instruction"]), ("assistant", r["output"]), ("user", "again ."), ("assistant", r["output"])]
            if i % 2:
                f.write(json.dumps({"conversations": [{"from": {"user": "human", "assistant": "gpt"}[role], "value": text}
                                                      for role, text in turns]}) + "\n")
            else:
                f.write(json.dumps({"messages": [{"role": role, "content": text} for role, text in turns]}) + "\n")
    cfg = validate(run_config(setup, tmp_path / "run", max_steps=12, save_steps=12, learning_rate=1e-2, warmup_steps=0,
                              objective={"name": "mle"},
                              data={"format": "chat", "train_files": [str(tmp_path / "chat.jsonl")], "max_length": 128,
                                    "chat_template": TEMPLATE, "validation_split_percentage": 10}))
    with single_rank():
        res = run(cfg)
    losses = losses_from_log(tmp_path / "run" / "train_log.jsonl")
    first, last = losses[1], sum(losses[s] for s in (10, 11, 12)) / 3
    assert last < 0.7 * first, losses
    from transformers import AutoTokenizer

    exported = AutoTokenizer.from_pretrained(str(tmp_path / "run" / "checkpoint-12"))
    assert exported.chat_template == TEMPLATE == res.tokenizer.chat_template
