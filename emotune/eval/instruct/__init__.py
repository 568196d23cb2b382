"""Instruction-following evaluation (the EMO paper's Appendix C): responses in AlpacaEval's format, and a
local pairwise judge (docs/instruct-eval.md)."""
