"""What a run's evaluations say: `emotune results` (the table, emotune.report.results) and `emotune report`
(plots, an HTML page and the paper's table, emotune.report.build).

It reads what the scheduler wrote (emotune.scheduling's result store, discovery and records); the scheduler
never imports it. Torch-free like the scheduler (tests/test_import_graph.py checks both).
"""
