"""The prompt an instruction-tuned model is evaluated with is the one it was trained on."""

from __future__ import annotations

import pytest

from emotune import prompts


@pytest.mark.parametrize("input_", ["", "   ", None, "some context"])
def test_the_training_stage_and_the_evaluator_render_the_same_alpaca_prompt(input_):
    from emotune.train import data

    assert data.alpaca_prompt("Name a colour.", input_) == prompts.alpaca_prompt("Name a colour.", input_)


def test_the_input_variant_only_for_a_non_blank_input():
    assert "### Input:" in prompts.alpaca_prompt("a", "b")
    assert "### Input:" not in prompts.alpaca_prompt("a", " ")
    assert prompts.alpaca_prompt("a").endswith("### Response:\n")
