"""Evaluating a run's checkpoints as they land: discovery, the result store, the scheduler and its runners
(what the results say is emotune.report's business: it reads the store, the scheduler never imports it).

Torch-free on purpose (a scheduler pass and a job start in well under a second): it never imports torch nor
emotune.eval; it runs the evaluator as a command (`emotune eval ...`) and reads the summary.json it writes.
tests/test_import_graph.py checks this.
"""
