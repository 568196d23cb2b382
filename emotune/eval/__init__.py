"""Evaluation of one model: the `emotune eval` CLI, resumption keys and the summary format.

icl/ holds the in-context-learning suites (TopK retrieval + PPL scoring, MMLU 5-shot), generation/ the
open-ended generation suites (sampling, MAUVE, ROUGE, LM metrics). Task files are read by emotune.tasks.
Never imports emotune.scheduling: the scheduler runs this evaluator as a command.
"""
