"""Evaluation stage: tasks, retriever, scorer, generation + MAUVE, result store, scheduler, report."""
