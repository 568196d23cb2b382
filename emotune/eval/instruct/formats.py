"""The judges' prompt and verdict formats: Auto-J's pairwise protocol, PandaLM's, and a plain A / B / tie one.

A format turns (instruction, first response, second response) into the judge's prompt, says which
verdict strings stand for "the first is better", "the second is better" and "tie" (compared by their
likelihood in judge_mode=likelihood), and parses a generated verdict (judge_mode=generate). A generated
text that says none of the three is *unparsed* (None), never mapped to a guess.

- autoj   Auto-J (GAIR, 13B) was trained on its "pairwise with tie" protocol inside the LLaMA-2 chat
          wrapper `[INST] ... [/INST]`: it writes a comparison, then "So, the final decision is Response 1
          / Response 2 / Tie"; the verdict is what follows the *last* "final decision is". Its default
          mode is generate (the decision comes after the critique; likelihood mode scores the decision
          sentence right after the prompt, skipping the critique). Its example decodes greedily.
- pandalm PandaLM (7B) reads "### Response 1 / ### Response 2" and answers on its first line `1`, `2` or
          `Tie`, then a reason and a reference answer. Default mode generate, decoded as its inference
          script does (beam search, 4 beams, repetition penalty 1.2); likelihood compares the three first
          lines.
- plain   for any other instruction-tuned model: asks for "A", "B" or "tie"; default mode likelihood.

The protocol texts are the judges' training prompts (a judge only works on the prompt it was trained on);
the code is ours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

FIRST, SECOND, TIE = "first", "second", "tie"
VERDICTS = (FIRST, SECOND, TIE)

_AUTOJ = (
    "You are assessing two submitted responses on a given user's query and judging which response is better "
    "or they are tied. Here is the data:\n\n[BEGIN DATA]\n***\n[Query]: {instruction}\n***\n[Response 1]: "
    "{first}\n***\n[Response 2]: {second}\n***\n[END DATA]\n\nHere are the instructions to assess and compare "
    "the two responses:\n\n1. Pinpoint the key factors to distinguish these two responses.\n2. Conclude your "
    "comparison by providing a final decision on which response is better, or they are tied. Begin your final "
    "decision statement with \"So, the final decision is Response 1 / Response 2 / Tie\". Ensure that your "
    "decision aligns coherently with the comprehensive evaluation and comparison you've provided."
)
_PANDALM = (
    "Below are two responses for a given task. The task is defined by the Instruction. Evaluate the responses "
    "and generate a reference answer for the task.\n\n### Instruction:\n{instruction}\n\n### Response 1:\n"
    "{first}\n\n### Response 2:\n{second}\n\n### Evaluation:\n"
)
_PLAIN = (
    "Compare two responses to an instruction and say which one follows it better. Answer with A, B or tie."
    "\n\n### Instruction:\n{instruction}\n\n### Response A:\n{first}\n\n### Response B:\n{second}\n\n"
    "### Verdict:"
)
# special tokens PandaLM strips from responses before it judges them (its inference script's whole list)
_SPECIAL = re.compile(r"<unk>|<pad>|<s>|</s>|\[PAD\]|<\|endoftext\|>|\[UNK\]|\[CLS\]|\[MASK\]|<\|startofpiece\|>"
                      r"|<\|endofpiece\|>|\[gMASK\]|\[sMASK\]")


def _autoj_prompt(instruction: str, first: str, second: str) -> str:
    return "[INST] " + _AUTOJ.format(instruction=instruction, first=first, second=second) + " [/INST]"


def _autoj_parse(text: str) -> str | None:
    pos = text.rfind("final decision is ")
    if pos < 0:
        return None
    rest = text[pos + len("final decision is "):].strip().lower()
    for word, verdict in (("response 1", FIRST), ("response 2", SECOND), ("tie", TIE)):
        if rest.startswith(word):
            return verdict
    return None


def _pandalm_prompt(instruction: str, first: str, second: str) -> str:
    clean = [_SPECIAL.sub("", s.strip()).strip() for s in (first, second)]
    return _PANDALM.format(instruction=instruction, first=clean[0], second=clean[1])


def _pandalm_parse(text: str) -> str | None:
    head = text.strip().split("\n")[0].strip().lower()
    return {"1": FIRST, "2": SECOND, "tie": TIE}.get(head)


def _plain_prompt(instruction: str, first: str, second: str) -> str:
    return _PLAIN.format(instruction=instruction, first=first, second=second)


def _plain_parse(text: str) -> str | None:
    words = text.strip().split()
    head = words[0].strip(".,:;!()[]\"'").lower() if words else ""
    return {"a": FIRST, "b": SECOND, "tie": TIE}.get(head)


@dataclass(frozen=True)
class JudgeFormat:
    name: str
    prompt: Callable[[str, str, str], str]  # (instruction, first, second) -> the judge's prompt
    parse: Callable[[str], str | None]  # generated text -> FIRST / SECOND / TIE, or None (unparsed)
    continuations: dict[str, str]  # verdict -> the string whose likelihood stands for it
    default_mode: str  # "generate" | "likelihood"
    max_new_tokens: int  # generate mode's default limit
    num_beams: int = 1  # generate mode's default decoding: the judge's own inference settings
    repetition_penalty: float = 1.0


FORMATS: dict[str, JudgeFormat] = {
    "autoj": JudgeFormat("autoj", _autoj_prompt, _autoj_parse,
                         {FIRST: " So, the final decision is Response 1", SECOND: " So, the final decision is "
                          "Response 2", TIE: " So, the final decision is Tie"}, "generate", 1024),
    # PandaLM's inference script decodes with beam search (4 beams, early stopping) and repetition penalty 1.2
    "pandalm": JudgeFormat("pandalm", _pandalm_prompt, _pandalm_parse, {FIRST: "1", SECOND: "2", TIE: "Tie"},
                           "generate", 512, num_beams=4, repetition_penalty=1.2),
    "plain": JudgeFormat("plain", _plain_prompt, _plain_parse, {FIRST: " A", SECOND: " B", TIE: " tie"},
                         "likelihood", 16),
}
