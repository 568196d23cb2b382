"""Prompt templates shared by the training stage and the evaluator (torch-free, imports nothing of ours).

The Alpaca template is the prompt an instruction-tuned model saw in training (`data.format: instruction`,
emotune.train.data) and the prompt the instruction-following evaluation renders at test time
(emotune.eval.instruct): both must read the same text, so it lives here, below both stages.
"""

from __future__ import annotations

ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def alpaca_prompt(instruction: str, input_: str | None = None) -> str:
    """The Alpaca prompt of one instruction (the variant with an input when it is non-blank)."""
    if input_ and input_.strip():
        return ALPACA_PROMPT_INPUT.format(instruction=instruction, input=input_)
    return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)
