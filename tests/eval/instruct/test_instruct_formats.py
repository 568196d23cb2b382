"""The judges' prompts are their originals' text byte for byte. The reference texts below are copied from
the upstream repositories (text only: the templates and how each repository fills them in), and the rendering
is compared on responses with the characters that matter (special tokens PandaLM strips, surrounding
whitespace, newlines, braces)."""

from __future__ import annotations

import re

import pytest

from emotune.eval.instruct.formats import FORMATS

# GAIR-NLP/auto-j, codes/usage/constants_prompt.py: `pairwise_tie` and PROMPT_INPUT_WO_SYSTEM, filled in by
# build_autoj_input(prompt, resp1, resp2, protocol="pairwise_tie") -> llama2_wrapper(user_msg)
AUTOJ_PAIRWISE_TIE = """You are assessing two submitted responses on a given user's query and judging which response is better or they are tied. Here is the data:

[BEGIN DATA]
***
[Query]: {prompt}
***
[Response 1]: {response}
***
[Response 2]: {response_another}
***
[END DATA]

Here are the instructions to assess and compare the two responses:

1. Pinpoint the key factors to distinguish these two responses.
2. Conclude your comparison by providing a final decision on which response is better, or they are tied. Begin your final decision statement with "So, the final decision is Response 1 / Response 2 / Tie". Ensure that your decision aligns coherently with the comprehensive evaluation and comparison you've provided."""  # noqa: E501
AUTOJ_WRAPPER = "[INST] {input} [/INST]"

# WeOpenML/PandaLM, pandalm/utils/pandalm_inference.py: build_pandalm_prompt without an input (AlpacaEval has
# none), after each response is stripped, cleared of this pattern's special tokens and stripped again
PANDALM_PATTERN = (r"<unk>|<pad>|<s>|</s>|\[PAD\]|<\|endoftext\|>|\[UNK\]|\[CLS\]|\[MASK\]|<\|startofpiece\|>"
                   r"|<\|endofpiece\|>|\[gMASK\]|\[sMASK\]")
PANDALM_RSP = "### Response 1:\n{resp1}\n\n### Response 2:\n{resp2}"
PANDALM_NO_INPUT = ("Below are two responses for a given task. The task is defined by the Instruction. Evaluate the "
                    "responses and generate a reference answer for the task.\n\n### Instruction:\n{instruction}\n\n"
                    "{rsp}\n\n### Evaluation:\n")


def autoj_reference(instruction: str, first: str, second: str) -> str:
    user = AUTOJ_PAIRWISE_TIE.format(prompt=instruction, response=first, response_another=second)
    return AUTOJ_WRAPPER.format(input=user)


def pandalm_reference(instruction: str, first: str, second: str) -> str:
    pattern = re.compile(PANDALM_PATTERN)
    r1, r2 = (pattern.sub("", r.strip()).strip() for r in (first, second))
    return PANDALM_NO_INPUT.format(instruction=instruction, rsp=PANDALM_RSP.format(resp1=r1, resp2=r2))


CASES = [
    ("What's the capital of the United States?", "The capital of the United States is New York.",
     "The captical of the United States is Washington D.C."),
    ("Write a haiku.\n\nAbout {rain}", "  Rain on the roof</s>\nsoft <unk>drums [PAD] ", "<s> Drops {0} fall\n\n"),
    ("Explain", "[gMASK]code: `x = {}`<|endoftext|>", "<|startofpiece|>a<|endofpiece|> [sMASK][MASK][CLS][UNK]<pad>"),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name,reference", [("autoj", autoj_reference), ("pandalm", pandalm_reference)])
def test_prompts_are_the_originals_byte_for_byte(name, reference, case):
    assert FORMATS[name].prompt(*case).encode() == reference(*case).encode()


def test_decoding_defaults_are_the_judges_own():
    # PandaLM's inference(): num_beams=4, early_stopping=True, repetition_penalty=1.2, max_new_tokens=512;
    # Auto-J's example: vLLM SamplingParams(temperature=0.0, top_p=1.0, max_tokens=1024), i.e. greedy
    pandalm, autoj = FORMATS["pandalm"], FORMATS["autoj"]
    assert (pandalm.num_beams, pandalm.repetition_penalty, pandalm.max_new_tokens) == (4, 1.2, 512)
    assert (autoj.num_beams, autoj.repetition_penalty, autoj.max_new_tokens) == (1, 1.0, 1024)


@pytest.mark.parametrize("text,verdict", [
    # Auto-J's extract_pariwise_result: the text after the *last* "final decision is ", stripped, lowercased
    ("Response 2 is wrong. So, the final decision is Response 1.", "first"),
    ("So, the final decision is Response 1 ... Actually the final decision is Response 2", "second"),
    ("\n  So, the final decision is TIE", "tie"),
    ("So, the final decision isResponse 1", None),
])
def test_autoj_verdicts_are_read_as_auto_j_reads_them(text, verdict):
    assert FORMATS["autoj"].parse(text) == verdict


@pytest.mark.parametrize("text,verdict", [
    # PandaLM's parse_pandalm_response: the first line of the stripped text; "1", "2", or "tie" in any case
    ("1\n\n### Reason: x\n\n### Reference: y", "first"), ("\n2\n", "second"), ("TIE\nreason", "tie"),
    ("Response 1", None),  # PandaLM's own script would call this a tie: ours counts it unparsed
])
def test_pandalm_verdicts_are_read_as_pandalm_reads_them(text, verdict):
    assert FORMATS["pandalm"].parse(text) == verdict
